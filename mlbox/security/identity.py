"""Users, API tokens and the actor behind a call: the identity repository over meta.db.

A token is `mlbx_<id>_<secret>`: the id is public (shown in listings, used to revoke), the
secret is 256 random bits and only its SHA-256 is stored, so a copy of meta.db grants
nothing. A token acts with the lower of its own role and its user's role at the time of use,
so demoting a user demotes their tokens; a disabled user's tokens fail. The local CLI acts as
the box user mapped to the OS user running it; `MLBOX_TOKEN` acts as that token's user instead.
A token may be scoped to named deployments and feature views (security/scopes.py; table token_scopes,
migration 0013). Every change to users, tokens and scopes moves `auth_state.revision` (triggers,
migrations 0012_auth and 0013_token_scopes), which a serving worker compares before trusting what it cached.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from mlbox import clock
from mlbox.errors import AuthError, Conflict, NotFound, UsageError
from mlbox.security.roles import PERMISSIONS, lower_role
from mlbox.security.scopes import Scopes
from mlbox.store.audit import AuditLog
from mlbox.store.sqlite import Database
from mlbox.types import ROLES, USER_PATTERN, Actor, Role, check_name

TOKEN_PATTERN = re.compile(r"^mlbx_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    os_user: str | None
    created_at: str
    disabled_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TokenInfo:
    id: str
    user: str
    role: Role
    description: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None
    deployments: tuple[str, ...] = ()  # its scopes; both empty: unrestricted
    views: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= clock.iso():
            return "expired"
        return "active"

    @property
    def scopes(self) -> Scopes | None:
        return Scopes.of(self.deployments, self.views)

    def as_dict(self) -> dict[str, Any]:
        scope = self.scopes
        return {**asdict(self), "state": self.state, "scope": " ".join(scope.as_words()) if scope else "all"}


@dataclass(frozen=True)
class Grant:
    """What a valid token grants now: its actor (at the effective role), its id, when it expires, its scopes."""

    actor: Actor
    token_id: str
    expires_at: str | None  # clock.iso() text
    scopes: Scopes | None = None  # None: every deployment and view

    @functools.cached_property
    def _expires_ts(self) -> float | None:
        return None if self.expires_at is None else clock.parse_iso(self.expires_at).timestamp()

    def expired(self) -> bool:
        """Whether the token has expired by now (a float comparison: this runs on every served request)."""
        ts = self._expires_ts
        return ts is not None and clock.now().timestamp() >= ts


def check_role(role: str) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise UsageError(f"unknown role {role!r}", hint=f"roles are {', '.join(ROLES)}")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Identity:
    """Users and tokens. Mutations are audited with the acting user's name."""

    def __init__(self, db: Database, audit: AuditLog, token_ttl_days: int = 90) -> None:
        self.db = db
        self.audit = audit
        self.token_ttl_days = token_ttl_days

    # users ---------------------------------------------------------------
    def user(self, name: str) -> User:
        row = self.db.one("SELECT * FROM users WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no user {name!r}", hint="`mlbox auth user list` shows the users")
        return User(**row)

    def users(self) -> list[User]:
        return [User(**r) for r in self.db.query("SELECT * FROM users ORDER BY name")]

    def add_user(self, actor: str, name: str, role: str, os_user: str | None = None) -> User:
        check_name(name, "user name", USER_PATTERN)
        if os_user is not None:
            check_name(os_user, "OS user name", USER_PATTERN)
        role = check_role(role)
        with self.db.atomic():
            if self.db.one("SELECT 1 FROM users WHERE name = ?", (name,)):
                raise Conflict(f"user {name!r} already exists")
            if os_user and self.db.one("SELECT name FROM users WHERE os_user = ?", (os_user,)):
                raise Conflict(f"OS user {os_user!r} is already mapped to another box user")
            self.db.execute(
                "INSERT INTO users (name, role, os_user, created_at) VALUES (?, ?, ?, ?)",
                (name, role, os_user, clock.iso()),
            )
            self.audit.record(actor, "auth.user.add", name, {"role": role, "os_user": os_user})
        return self.user(name)

    def set_role(self, actor: str, name: str, role: str) -> User:
        role = check_role(role)
        with self.db.atomic():
            old = self.user(name)
            if old.role == "admin" and role != "admin" and old.disabled_at is None and self._active_admins() <= 1:
                raise Conflict(f"{name!r} is the last admin; make another admin first")
            self.db.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
            self.audit.record(actor, "auth.user.role", name, {"from": old.role, "to": role})
        return self.user(name)

    def disable_user(self, actor: str, name: str) -> User:
        with self.db.atomic():
            user = self.user(name)
            if user.role == "admin" and user.disabled_at is None and self._active_admins() <= 1:
                raise Conflict(f"{name!r} is the last admin; make another admin first")
            now = clock.iso()
            self.db.execute("UPDATE users SET disabled_at = ? WHERE name = ? AND disabled_at IS NULL", (now, name))
            revoked = self.db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE user = ? AND revoked_at IS NULL", (now, name)
            ).rowcount
            self.audit.record(actor, "auth.user.disable", name, {"tokens_revoked": revoked})
        return self.user(name)

    def _active_admins(self) -> int:
        return int(self.db.scalar("SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL"))

    # tokens --------------------------------------------------------------
    def create_token(
        self,
        actor: str,
        user: str,
        role: str | None = None,
        expires_in_s: int | None = None,
        never_expires: bool = False,
        description: str = "",
        deployments: Sequence[str] = (),
        views: Sequence[str] = (),
    ) -> tuple[TokenInfo, str]:
        """Create a token; returns its info and the token text, which is never stored or shown again.
        With `deployments` or `views` it reaches only those (security/scopes.py)."""
        scopes = Scopes.of(deployments, views)
        owner = self.user(user)
        if owner.disabled_at:
            raise UsageError(f"user {user!r} is disabled")
        token_role = check_role(role) if role else owner.role
        if not PERMISSIONS[token_role] <= PERMISSIONS[owner.role]:
            raise UsageError(
                f"a {token_role} token would give {user!r} more than their role ({owner.role}) allows",
                hint="change the user's role first, or pick a narrower role",
            )
        if len(description) > 200:
            raise UsageError("token description is longer than 200 characters")
        now = clock.now()
        if never_expires:
            expires = None
        elif expires_in_s is not None:
            expires = clock.iso(now + timedelta(seconds=expires_in_s))
        else:
            expires = clock.iso(now + timedelta(days=self.token_ttl_days)) if self.token_ttl_days else None
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO tokens (id, user, role, secret_hash, description, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, user, token_role, _hash(secret), description, clock.iso(now), expires),
            )
            if scopes is not None:
                self.db.executemany(
                    "INSERT INTO token_scopes (token_id, kind, name) VALUES (?, ?, ?)",
                    [(token_id, "deployment", d) for d in sorted(scopes.deployments)]
                    + [(token_id, "view", v) for v in sorted(scopes.views)],
                )
            details = {"token": token_id, "role": token_role, "expires": expires}
            if scopes is not None:
                details["scopes"] = " ".join(scopes.as_words())
            self.audit.record(actor, "auth.token.create", user, details)
        return self.token(token_id), f"mlbx_{token_id}_{secret}"

    def token(self, token_id: str) -> TokenInfo:
        row = self.db.one("SELECT * FROM tokens WHERE id = ?", (token_id,))
        if row is None:
            raise NotFound(f"no token {token_id!r}", hint="`mlbox auth token list` shows token ids")
        return self._info(row, self._scopes([token_id]))

    def tokens(self, user: str | None = None) -> list[TokenInfo]:
        sql = "SELECT * FROM tokens" + (" WHERE user = ?" if user else "") + " ORDER BY created_at"
        rows = self.db.query(sql, (user,) if user else ())
        scopes = self._scopes([r["id"] for r in rows] if user else None)
        return [self._info(r, scopes) for r in rows]

    def _scopes(self, token_ids: list[str] | None) -> dict[str, dict[str, list[str]]]:
        """{token id: {kind: [names]}} of `token_ids` (None: every token)."""
        sql = "SELECT token_id, kind, name FROM token_scopes"
        params: tuple[str, ...] = ()
        if token_ids is not None:
            if not token_ids:
                return {}
            sql += f" WHERE token_id IN ({', '.join('?' * len(token_ids))})"
            params = tuple(token_ids)
        out: dict[str, dict[str, list[str]]] = {}
        for r in self.db.query(sql + " ORDER BY token_id, kind, name", params):
            out.setdefault(r["token_id"], {}).setdefault(r["kind"], []).append(r["name"])
        return out

    @staticmethod
    def _info(row: dict[str, Any], scopes: dict[str, dict[str, list[str]]]) -> TokenInfo:
        row = {k: v for k, v in row.items() if k != "secret_hash"}
        held = scopes.get(row["id"], {})
        return TokenInfo(**row, deployments=tuple(held.get("deployment", ())), views=tuple(held.get("view", ())))

    def revoke_token(self, actor: str, token_id: str) -> TokenInfo:
        with self.db.atomic():
            info = self.token(token_id)
            if info.revoked_at is None:
                self.db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (clock.iso(), token_id))
                self.audit.record(actor, "auth.token.revoke", info.user, {"token": token_id})
        return self.token(token_id)

    # authentication ------------------------------------------------------
    def revision(self) -> int:
        """The auth revision: it moves with every change to users and tokens (see the module docstring)."""
        return int(self.db.scalar("SELECT revision FROM auth_state WHERE id = 1") or 0)

    def authenticate(self, token: str, *, touch: bool = True) -> Actor:
        """The actor a token stands for; AuthError for anything unknown, revoked, expired or disabled."""
        return self.grant(token, touch=touch).actor

    def grant(self, token: str, *, touch: bool = True) -> Grant:
        """What `token` grants now, at the lower of its role and its user's current role; AuthError for a
        token that is unknown, revoked, expired or whose user is disabled."""
        match = TOKEN_PATTERN.match(token.strip() if isinstance(token, str) else "")
        if not match:
            raise AuthError("malformed API token", hint="tokens look like mlbx_<id>_<secret>")
        token_id, secret = match.groups()
        row = self.db.one(
            "SELECT t.secret_hash, t.role, t.user, t.expires_at, t.revoked_at, u.role AS user_role, u.disabled_at "
            "FROM tokens t JOIN users u ON u.name = t.user WHERE t.id = ?",
            (token_id,),
        )
        if row is None or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
            raise AuthError("invalid API token")
        if row["disabled_at"]:
            raise AuthError(f"user {row['user']!r} is disabled", hint="ask an admin")
        if row["revoked_at"]:
            raise AuthError("this API token has been revoked")
        now = clock.iso()
        if row["expires_at"] and row["expires_at"] <= now:
            raise AuthError("this API token has expired", hint="ask an admin for a new one")
        if touch:
            with self.db.atomic():
                self.db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token_id))
        role = lower_role(check_role(row["role"]), check_role(row["user_role"]))
        held = self._scopes([token_id]).get(token_id, {})
        scopes = Scopes.of(held.get("deployment", ()), held.get("view", ()))
        return Grant(actor=Actor(row["user"], role, "token"), token_id=token_id, expires_at=row["expires_at"], scopes=scopes)

    def actor_for_os_user(self, os_user: str) -> Actor:
        row = self.db.one("SELECT name, role, disabled_at FROM users WHERE os_user = ?", (os_user,))
        if row is None:
            raise AuthError(
                f"OS user {os_user!r} has no user in this box",
                hint=f"an admin can run `mlbox auth user add {os_user} --role data-scientist --os-user {os_user}`,"
                " or set MLBOX_TOKEN",
            )
        if row["disabled_at"]:
            raise AuthError(f"box user {row['name']!r} is disabled")
        return Actor(row["name"], row["role"], "os")

    def bootstrap_admin(self, os_user: str) -> User | None:
        """Make `os_user` the box's first admin; does nothing once the box has users."""
        with self.db.atomic():
            if self.db.scalar("SELECT count(*) FROM users"):
                return None
            return self.add_user("system", os_user, "admin", os_user=os_user)
