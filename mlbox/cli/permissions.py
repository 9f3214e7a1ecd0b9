"""What every `mlbox` command needs: its permission table (checked by tests over the Typer tree) and docs/permissions.md.

The commands keep their inline `actor(box, action)` checks, made before any other work; this table
declares them so that tests/security/test_matrix_cli.py can walk every command with every role and
fail on a command missing here, an entry whose command is gone, or a check that disagrees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mlbox.security.roles import ACTIONS, PERMISSIONS, READ
from mlbox.types import ROLES


@dataclass(frozen=True)
class Also:
    """A further action some arguments add: `argv` (after the command's path) is an example the tests run.

    `{file}` in `argv` stands for an existing file's path.
    """

    argv: tuple[str, ...]
    action: str
    when: str


@dataclass(frozen=True)
class Needs:
    """A command's permissions: `actions`, all checked (in order) before any work, then those of `also`."""

    actions: tuple[str, ...]
    also: tuple[Also, ...] = ()


@dataclass(frozen=True)
class NoBox:
    """A command that never opens an existing box as a box user, so no role applies; `reason` says why."""

    reason: str
    also: tuple[Also, ...] = ()


Permission = Needs | NoBox


def _n(*actions: str, also: tuple[Also, ...] = ()) -> Needs:
    return Needs(actions=actions, also=also)


_JOB_TYPES = (
    Also(("train", "{file}"), "train.run", "type train"),
    Also(("materialize",), "features.write", "type materialize"),
    Also(("predict", "x", "{file}", "out.csv"), "predict", "type predict"),
    Also(("monitor", "x"), "deploy.manage", "type monitor (its policy may roll back, promote or deploy)"),
    Also(("command", "true"), "jobs.command", "type command"),
    Also(("retention",), "box.admin", "type retention (the purge deletes data past its retention)"),
)

COMMANDS: Mapping[str, Permission] = MappingProxyType({
    "init": NoBox("creates a new project and box; its creator becomes the admin"),
    "quickstart": NoBox("creates its own fresh box in a new folder and runs there as its admin"),
    "version": NoBox("prints version numbers only"),
    "settings": NoBox("reads the settings files and environment, not the box: file access decides"),
    "doctor": NoBox(
        "diagnoses the box's files directly, so it works on a box too broken to open; file access decides",
        also=(Also(("--repair",), "box.admin", "--repair (it writes)"),),
    ),
    "auth selfsigned": NoBox("writes a certificate and key where told; the file system decides who may write there"),
    "bench features": NoBox("builds its own temporary boxes and data"),
    "bench train": NoBox("builds its own temporary boxes and data"),
    "bench serve": NoBox("builds its own temporary boxes, models and servers"),
    "bench encryption": NoBox("builds its own temporary boxes, data, model and servers"),
    "bench monitor": NoBox("builds its own temporary boxes and data"),
    "whoami": _n(READ),
    "tui": _n(READ),
    "backup": _n("box.admin"),
    "train": _n(
        "train.run",
        also=(
            Also(("--register",), "models.register", "--register"),
            Also(("--promote-if-gate", "staging"), "models.promote", "--promote-if-gate"),
        ),
    ),
    "serve": _n("deploy.manage"),
    "predict": _n("predict"),
    "package": _n("deploy.manage", "auth.manage"),
    "worker": _n("jobs.submit"),
    "runs list": _n(READ),
    "runs show": _n(READ),
    "runs compare": _n(READ),
    "models list": _n(READ),
    "models show": _n(READ),
    "models promote": _n("models.promote"),
    "models archive": _n("models.promote"),
    "models diff": _n(READ),
    "models export": _n(READ),
    "deploy create": _n("deploy.manage"),
    "deploy canary": _n("deploy.manage"),
    "deploy sticky": _n("deploy.manage"),
    "deploy shadow": _n("deploy.manage"),
    "deploy promote": _n("deploy.manage"),
    "deploy rollback": _n("deploy.manage"),
    "deploy status": _n(READ),
    "deploy log": _n(READ),
    "jobs submit": _n("jobs.submit", also=_JOB_TYPES),
    "jobs list": _n(READ),
    "jobs show": _n(READ),
    "jobs logs": _n(READ),
    "jobs cancel": _n("jobs.submit"),
    "jobs retry": _n("jobs.submit"),
    "jobs quota": _n("box.admin"),
    "jobs schedules": _n(READ),
    "jobs unschedule": _n("box.admin"),
    "jobs exec": _n("jobs.submit"),
    "labels ingest": _n("features.write"),
    "monitor check": _n(READ),
    "monitor history": _n(READ),
    "monitor quality": _n(READ),
    "monitor ab": _n(READ),
    "monitor serving": _n(READ),
    "monitor profile": _n("models.register"),
    "monitor apply": _n("deploy.manage"),
    "monitor run": _n("deploy.manage"),
    "monitor actions": _n(READ),
    "monitor report": _n(READ),
    "monitor policy set": _n("deploy.manage"),
    "monitor policy show": _n(READ),
    "monitor policy remove": _n("deploy.manage"),
    "auth user add": _n("auth.manage"),
    "auth user list": _n(READ),
    "auth user role": _n("auth.manage"),
    "auth user disable": _n("auth.manage"),
    "auth token create": _n("auth.manage"),
    "auth token list": _n("auth.manage"),
    "auth token revoke": _n("auth.manage"),
    "audit list": _n("audit.read"),
    "audit verify": _n("audit.read"),
    "audit export": _n("audit.read"),
    "features plan": _n(READ),
    "features apply": _n("features.write"),
    "features list": _n(READ),
    "features show": _n(READ),
    "features ingest": _n("features.write"),
    "features snapshot": _n(READ),
    "features training-set": _n("train.run"),
    "features materialize": _n("features.write"),
    "features get": _n("features.read_online"),
    "features push": _n("features.write"),
    "features flush": _n("features.write"),
    "features lineage": _n(READ),
    "features sql": _n(READ),
    "privacy report": _n(READ),
    "keys status": _n("box.admin"),
    "keys rotate": _n("box.admin"),
    "keys encrypt-box": _n("box.admin"),
    "privacy purge": _n("box.admin"),
    "privacy erase": _n("box.admin"),
    "privacy export": _n("box.admin"),
    "privacy record": _n(READ),
    "privacy residency show": _n(READ),
    "privacy residency set": _n("box.admin"),
    "privacy region add": _n("box.admin"),
    "privacy region list": _n(READ),
    "privacy region remove": _n("box.admin"),
    "privacy transfer add": _n("box.admin"),
    "privacy transfer list": _n(READ),
    "privacy transfer revoke": _n("box.admin"),
})  # fmt: skip


def markdown() -> str:
    """docs/permissions.md: the role x action table, then what each command and HTTP route needs."""
    from mlbox.api.permissions import ROUTES, Public

    lines = [
        "# Permissions",
        "",
        "Generated from `mlbox/security/roles.py`, `mlbox/cli/permissions.py` and `mlbox/api/permissions.py`",
        "by `python -m mlbox.cli.permissions > docs/permissions.md`; tests/security/test_matrix_*.py walk every",
        "command and route with every role against these tables. Do not edit by hand.",
        "",
        "## Roles and actions",
        "",
        "| action | " + " | ".join(ROLES) + " | what it allows |",
        "|---|" + "---|" * len(ROLES) + "---|",
    ]
    for action, text in ACTIONS.items():
        marks = " | ".join("yes" if action in PERMISSIONS[r] else "" for r in ROLES)
        lines.append(f"| `{action}` | {marks} | {text} |")
    lines += ["", "## Commands", "", "| command | needs |", "|---|---|"]
    for path, perm in sorted(COMMANDS.items()):
        if isinstance(perm, Needs):
            needs = ", ".join(f"`{a}`" for a in perm.actions)
        else:
            needs = f"no box role: {perm.reason}"
        extra = "".join(f"; with {x.when}: `{x.action}`" for x in perm.also)
        lines.append(f"| `mlbox {path}` | {needs}{extra} |")
    lines += ["", "## HTTP routes", "", "| route | needs |", "|---|---|"]
    for (method, route), need in sorted(ROUTES.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        shown = f"public: {need.reason}" if isinstance(need, Public) else f"`{need}`"
        lines.append(f"| `{method} {route}` | {shown} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
