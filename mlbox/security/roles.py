"""The permission table: which role may do which action, in one place.

Actions are `noun.verb`. Interfaces (CLI, HTTP, TUI) check `require(actor, action)` before
calling a service, so services stay free of identity and every check reads this table.
"""

from __future__ import annotations

from mlbox.errors import PermissionDenied
from mlbox.types import ROLES, Actor, Role

READ = "read"  # list/show anything in the box except secrets
READ_PII = "features.read_pii"  # without it, protected feature values are masked or refused (privacy.protected_reads)

ACTIONS: dict[str, str] = {
    READ: "List and show box contents: features, runs, models, deployments, jobs.",
    "audit.read": "Read and verify the audit log.",
    "auth.manage": "Add users, change roles, create and revoke tokens for anyone.",
    "features.write": "Apply feature definitions, ingest batches, materialize.",
    "features.read_online": "Read online feature values.",
    "features.read_pii": "Read the values of protected fields (pii or restricted) unmasked, in every read path.",
    "train.run": "Train models and log runs.",
    "models.register": "Register model versions.",
    "models.promote": "Move model aliases (staging, production, archived).",
    "deploy.manage": "Create deployments, canaries, shadows; promote and roll back.",
    "predict": "Call prediction endpoints.",
    "jobs.submit": "Submit, cancel and retry jobs.",
    "jobs.command": "Run arbitrary command jobs on the server.",
    "box.admin": "Back up the box, change settings, erase and purge data.",
}

_ALL = frozenset(ACTIONS)
_DATA_SCIENTIST = frozenset(
    {READ, "features.write", "features.read_online", "train.run", "models.register", "jobs.submit", "predict"}
)
_ML_ENGINEER = _DATA_SCIENTIST | {"models.promote", "deploy.manage", "audit.read"}

PERMISSIONS: dict[Role, frozenset[str]] = {
    "admin": _ALL,
    "ml-engineer": frozenset(_ML_ENGINEER),
    "data-scientist": _DATA_SCIENTIST,
    "viewer": frozenset({READ}),
    "service": frozenset({"predict", "features.read_online", READ}),
}
assert set(PERMISSIONS) == set(ROLES)


def lower_role(a: Role, b: Role) -> Role:
    """The lower of two roles: the one whose permissions the other includes (a token's effective role is the
    lower of its own and its user's current one). Should the table ever hold two roles neither of which
    includes the other, the largest role within both wins, so the result never grants more than either."""
    if PERMISSIONS[a] <= PERMISSIONS[b]:
        return a
    if PERMISSIONS[b] <= PERMISSIONS[a]:
        return b
    both = PERMISSIONS[a] & PERMISSIONS[b]
    # viewer ({read}) always fits: every role may read
    return max((r for r in ROLES if PERMISSIONS[r] <= both), key=lambda r: len(PERMISSIONS[r]))


def allowed(role: str, action: str) -> bool:
    """Whether `role` may perform `action`. Unknown roles and actions are never allowed."""
    if action not in ACTIONS:
        return False
    return action in PERMISSIONS.get(role, frozenset())  # type: ignore[call-overload]


def disclosure(actor: Actor, setting: str) -> str:
    """How `actor` reads protected feature values: "raw" with `features.read_pii`, else the
    `privacy.protected_reads` setting ("mask" or "refuse"); interfaces pass it to the feature store."""
    return "raw" if allowed(actor.role, READ_PII) else setting


def require(actor: Actor, action: str) -> None:
    """Raise PermissionDenied unless `actor` may perform `action`."""
    if not allowed(actor.role, action):
        raise PermissionDenied(
            f"{actor.name} ({actor.role}) may not {ACTIONS.get(action, action).rstrip('.').lower()}",
            hint=f"needs permission '{action}'",
        )
