"""L2 security: the role table, users, tokens, and the CLI's acting user."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from mlbox import clock
from mlbox.box import Box
from mlbox.errors import AuthError, Conflict, NotFound, PermissionDenied, UsageError
from mlbox.security.roles import ACTIONS, PERMISSIONS, allowed, require
from mlbox.types import ROLES, Actor

from .conftest import OS_USER

# roles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "role, action, expected",
    [
        ("admin", "auth.manage", True),
        ("admin", "box.admin", True),
        ("admin", "jobs.command", True),
        ("ml-engineer", "deploy.manage", True),
        ("ml-engineer", "models.promote", True),
        ("ml-engineer", "audit.read", True),
        ("ml-engineer", "auth.manage", False),
        ("ml-engineer", "jobs.command", False),
        ("data-scientist", "train.run", True),
        ("data-scientist", "features.write", True),
        ("data-scientist", "models.promote", False),
        ("data-scientist", "audit.read", False),
        ("viewer", "read", True),
        ("viewer", "predict", False),
        ("viewer", "features.write", False),
        ("service", "predict", True),
        ("service", "features.read_online", True),
        ("service", "train.run", False),
        ("admin", "no.such.action", False),
        ("superuser", "read", False),
        ("", "read", False),
    ],
)
def test_allowed(role: str, action: str, expected: bool) -> None:
    assert allowed(role, action) is expected


def test_role_table_is_complete_and_ordered() -> None:
    assert set(PERMISSIONS) == set(ROLES)
    assert PERMISSIONS["admin"] == frozenset(ACTIONS)
    for role in ROLES:
        assert PERMISSIONS[role] <= frozenset(ACTIONS), role
        assert "read" in PERMISSIONS[role], role
    assert PERMISSIONS["viewer"] < PERMISSIONS["data-scientist"] < PERMISSIONS["ml-engineer"] < PERMISSIONS["admin"]


def test_require() -> None:
    require(Actor("a", "admin"), "auth.manage")
    with pytest.raises(PermissionDenied) as info:
        require(Actor("v", "viewer"), "auth.manage")
    assert "v (viewer)" in str(info.value) and "auth.manage" in str(info.value)
    assert info.value.status == 403 and isinstance(info.value, AuthError)


# users ------------------------------------------------------------------------------


def test_creator_is_admin(box: Box) -> None:
    [admin] = box.identity.users()
    assert (admin.name, admin.role, admin.os_user) == (OS_USER, "admin", OS_USER)
    assert box.identity.actor_for_os_user(OS_USER) == Actor(OS_USER, "admin", "os")
    assert box.identity.bootstrap_admin("someone-else") is None  # only the first time


def test_add_user_and_audit(box: Box) -> None:
    user = box.identity.add_user(OS_USER, "bob", "data-scientist", os_user="bob")
    assert (user.name, user.role, user.os_user, user.disabled_at) == ("bob", "data-scientist", "bob", None)
    assert user.created_at.endswith("Z")
    assert box.identity.user("bob") == user
    [entry] = box.audit.entries(action="auth.user.add", target="bob")
    assert entry.actor == OS_USER and entry.details == {"role": "data-scientist", "os_user": "bob"}


def test_duplicate_user_is_conflict(box: Box) -> None:
    box.identity.add_user(OS_USER, "bob", "viewer")
    with pytest.raises(Conflict):
        box.identity.add_user(OS_USER, "bob", "admin")
    with pytest.raises(Conflict, match="OS user"):
        box.identity.add_user(OS_USER, "carol", "viewer", os_user=OS_USER)
    assert sorted(u.name for u in box.identity.users()) == sorted([OS_USER, "bob"])


@pytest.mark.parametrize("name, role", [("bad name", "viewer"), ("-x", "viewer"), ("bob", "root"), ("", "viewer")])
def test_add_user_rejects_bad_input(box: Box, name: str, role: str) -> None:
    with pytest.raises(UsageError):
        box.identity.add_user(OS_USER, name, role)
    assert len(box.identity.users()) == 1


def test_unknown_user(box: Box) -> None:
    with pytest.raises(NotFound):
        box.identity.user("nobody")
    with pytest.raises(AuthError, match="nobody"):
        box.identity.actor_for_os_user("nobody")


def test_last_admin_cannot_be_demoted_or_disabled(box: Box) -> None:
    with pytest.raises(Conflict, match="last admin"):
        box.identity.set_role(OS_USER, OS_USER, "viewer")
    with pytest.raises(Conflict, match="last admin"):
        box.identity.disable_user(OS_USER, OS_USER)
    assert box.identity.user(OS_USER).role == "admin"
    box.identity.add_user(OS_USER, "root2", "admin")
    assert box.identity.set_role(OS_USER, OS_USER, "viewer").role == "viewer"
    with pytest.raises(Conflict, match="last admin"):
        box.identity.disable_user("root2", "root2")


def test_set_role_is_audited(box: Box) -> None:
    box.identity.add_user(OS_USER, "bob", "viewer")
    box.identity.set_role(OS_USER, "bob", "ml-engineer")
    [entry] = box.audit.entries(action="auth.user.role")
    assert entry.details == {"from": "viewer", "to": "ml-engineer"}


def test_disabled_user_cannot_act(box: Box) -> None:
    box.identity.add_user(OS_USER, "bob", "viewer", os_user="bob")
    box.identity.disable_user(OS_USER, "bob")
    with pytest.raises(AuthError, match="disabled"):
        box.identity.actor_for_os_user("bob")
    with pytest.raises(UsageError, match="disabled"):
        box.identity.create_token(OS_USER, "bob")


# tokens -----------------------------------------------------------------------------


def test_token_authenticates(box: Box) -> None:
    box.identity.add_user(OS_USER, "bob", "ml-engineer")
    info, token = box.identity.create_token(OS_USER, "bob", "data-scientist", description="ci")
    assert token.startswith(f"mlbx_{info.id}_")
    assert (info.user, info.role, info.description, info.state) == ("bob", "data-scientist", "ci", "active")
    assert box.identity.authenticate(token) == Actor("bob", "data-scientist", "token")
    assert box.identity.token(info.id).last_used_at is not None
    [entry] = box.audit.entries(action="auth.token.create")
    assert entry.details["token"] == info.id and token not in str(entry.details)


def test_token_defaults_to_users_role_and_ttl(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = clock.parse_iso("2030-01-01T00:00:00Z")
    monkeypatch.setattr(clock, "now", lambda: fixed)
    info, _ = box.identity.create_token(OS_USER, OS_USER)
    assert info.role == "admin"
    assert info.expires_at == clock.iso(fixed + timedelta(days=90))
    never, _ = box.identity.create_token(OS_USER, OS_USER, never_expires=True)
    assert never.expires_at is None


@pytest.mark.parametrize("bad", ["", "nope", "mlbx_123_abc", "mlbx_" + "0" * 12 + "_" + "A" * 43])
def test_bad_tokens_are_refused(box: Box, bad: str) -> None:
    with pytest.raises(AuthError):
        box.identity.authenticate(bad)


def test_wrong_secret_for_real_id_is_refused(box: Box) -> None:
    info, token = box.identity.create_token(OS_USER, OS_USER)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(AuthError, match="invalid"):
        box.identity.authenticate(forged)


def test_token_secret_is_stored_only_as_hash(box: Box, home: Path) -> None:
    info, token = box.identity.create_token(OS_USER, OS_USER, description="look for me")
    secret = token.split("_", 2)[2]
    box.identity.authenticate(token)
    box.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "meta.db" for p in files)
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data, f"token secret found in {path}"
        assert token.encode() not in data, f"token found in {path}"
    assert b"look for me" in (home / "meta.db").read_bytes() + (home / "meta.db-wal").read_bytes()
    assert "secret_hash" not in info.as_dict()
    assert all("secret_hash" not in t.as_dict() for t in box.identity.tokens())


def test_revoked_token_is_refused(box: Box) -> None:
    info, token = box.identity.create_token(OS_USER, OS_USER)
    revoked = box.identity.revoke_token(OS_USER, info.id)
    assert revoked.state == "revoked" and revoked.revoked_at
    with pytest.raises(AuthError, match="revoked"):
        box.identity.authenticate(token)
    box.identity.revoke_token(OS_USER, info.id)  # idempotent, audited once
    assert len(box.audit.entries(action="auth.token.revoke")) == 1
    with pytest.raises(NotFound):
        box.identity.revoke_token(OS_USER, "000000000000")


def test_token_expires(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    start = clock.parse_iso("2030-01-01T00:00:00Z")
    monkeypatch.setattr(clock, "now", lambda: start)
    info, token = box.identity.create_token(OS_USER, OS_USER, expires_in_s=3600)
    assert info.expires_at == "2030-01-01T01:00:00.000000Z"
    monkeypatch.setattr(clock, "now", lambda: start + timedelta(minutes=59))
    assert box.identity.authenticate(token).name == OS_USER
    monkeypatch.setattr(clock, "now", lambda: start + timedelta(hours=1))
    with pytest.raises(AuthError, match="expired"):
        box.identity.authenticate(token)
    assert box.identity.token(info.id).state == "expired"


def test_token_role_may_not_exceed_users_role(box: Box) -> None:
    box.identity.add_user(OS_USER, "vic", "viewer")
    box.identity.add_user(OS_USER, "dee", "data-scientist")
    with pytest.raises(UsageError, match="more than"):
        box.identity.create_token(OS_USER, "vic", "data-scientist")
    with pytest.raises(UsageError):
        box.identity.create_token(OS_USER, "vic", "service")  # service can predict, a viewer cannot
    with pytest.raises(UsageError):
        box.identity.create_token(OS_USER, "dee", "admin")
    with pytest.raises(UsageError, match="unknown role"):
        box.identity.create_token(OS_USER, "dee", "wizard")
    assert box.identity.tokens() == []
    info, _ = box.identity.create_token(OS_USER, "dee", "service")
    assert info.role == "service"


def test_disabling_user_revokes_tokens(box: Box) -> None:
    box.identity.add_user(OS_USER, "bob", "ml-engineer")
    t1, token1 = box.identity.create_token(OS_USER, "bob")
    t2, token2 = box.identity.create_token(OS_USER, "bob", "viewer")
    box.identity.disable_user(OS_USER, "bob")
    assert {t.state for t in box.identity.tokens("bob")} == {"revoked"}
    for token in (token1, token2):
        with pytest.raises(AuthError):
            box.identity.authenticate(token)
    [entry] = box.audit.entries(action="auth.user.disable")
    assert entry.details == {"tokens_revoked": 2}


def test_demoting_a_disabled_admin_is_not_a_last_admin_problem(box: Box) -> None:
    """A disabled admin is not an active admin, so demoting them cannot remove the last one."""
    box.identity.add_user(OS_USER, "old", "admin")
    box.identity.disable_user(OS_USER, "old")
    assert box.identity.set_role(OS_USER, "old", "viewer").role == "viewer"


def test_audit_chain_survives_identity_work(box: Box) -> None:
    box.identity.add_user(OS_USER, "bob", "viewer")
    info, _ = box.identity.create_token(OS_USER, "bob")
    box.identity.revoke_token(OS_USER, info.id)
    box.identity.disable_user(OS_USER, "bob")
    result = box.audit.verify()
    assert result.ok and result.checked == 5


# CLI --------------------------------------------------------------------------------


def test_cli_token_create_prints_token_once(box: Box, home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    box.identity.add_user(OS_USER, "bob", "ml-engineer")
    result = cli("--home", str(home), "auth", "token", "create", "--user", "bob", "--role", "viewer", "--expires", "30d")
    assert result.exit_code == 0, result.exception
    tokens = [w for w in result.stdout.split() if w.startswith("mlbx_")]
    assert len(tokens) == 1, result.stdout
    token = tokens[0]
    assert result.stdout.count(token) == 1
    assert box.identity.authenticate(token) == Actor("bob", "viewer", "token")
    [info] = box.identity.tokens("bob")
    expires = clock.parse_iso(info.expires_at or "")
    assert timedelta(days=29, hours=23) < expires - clock.now() <= timedelta(days=30)

    listing = cli("--home", str(home), "auth", "token", "list")
    assert listing.exit_code == 0
    assert info.id in listing.stdout
    assert token not in listing.stdout and token.split("_", 2)[2] not in listing.stdout
    as_json = cli("--home", str(home), "--json", "auth", "token", "list")
    [row] = as_json.json()
    assert row["id"] == info.id and row["state"] == "active"
    assert "secret_hash" not in row and "token" not in row
    assert token.split("_", 2)[2] not in as_json.stdout


def test_cli_token_create_json_and_never(box: Box, home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("--home", str(home), "--json", "auth", "token", "create", "-u", OS_USER, "--expires", "never")
    assert result.exit_code == 0, result.exception
    data = result.json()
    assert data["expires_at"] is None and data["role"] == "admin"
    assert box.identity.authenticate(data["token"]).name == OS_USER


def test_cli_token_create_bad_duration(box: Box, home: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("--home", str(home), "auth", "token", "create", "--user", OS_USER, "--expires", "soon")
    assert result.exit_code == 2
    assert "invalid duration" in result.stderr


def test_cli_token_revoke(box: Box, home: Path, cli, cli_run) -> None:  # type: ignore[no-untyped-def]
    info, token = box.identity.create_token(OS_USER, OS_USER)
    refused = cli_run("--home", str(home), "auth", "token", "revoke", token)
    assert refused.exit_code == 2 and "token id" in refused.stderr
    result = cli("--home", str(home), "auth", "token", "revoke", info.id)
    assert result.exit_code == 0, result.exception
    with pytest.raises(AuthError):
        box.identity.authenticate(token)


def test_cli_user_commands(box: Box, home: Path, cli, kernel_user) -> None:  # type: ignore[no-untyped-def]
    assert cli("--home", str(home), "auth", "user", "add", "bob", "--role", "viewer", "--os-user", "bob").exit_code == 0
    assert cli("--home", str(home), "auth", "user", "role", "bob", "data-scientist").exit_code == 0
    users = cli("--home", str(home), "--json", "auth", "user", "list").json()
    assert sorted((u["name"], u["role"]) for u in users) == sorted([(OS_USER, "admin"), ("bob", "data-scientist")])
    kernel_user("bob")  # the kernel says so; no environment variable could
    who = cli("--home", str(home), "--json", "whoami").json()
    assert who["user"] == "bob" and who["role"] == "data-scientist" and who["via"] == "os"
    kernel_user(OS_USER)
    assert cli("--home", str(home), "auth", "user", "disable", "bob").exit_code == 0
    assert box.identity.user("bob").disabled_at is not None


def test_cli_whoami_with_token(box: Box, home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    box.identity.add_user(OS_USER, "svc", "service")
    _, token = box.identity.create_token(OS_USER, "svc")
    who = cli("--home", str(home), "--json", "whoami", env={"MLBOX_TOKEN": token, "LOGNAME": "stranger"}).json()
    assert (who["user"], who["role"], who["via"]) == ("svc", "service", "token")


def test_cli_viewer_token_cannot_add_users(box: Box, home: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    box.identity.add_user(OS_USER, "vic", "viewer")
    _, token = box.identity.create_token(OS_USER, "vic")
    result = cli_run("--home", str(home), "auth", "user", "add", "eve", "--role", "admin", env={"MLBOX_TOKEN": token})
    assert result.exit_code == PermissionDenied.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "vic (viewer)" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert sorted(u.name for u in box.identity.users()) == sorted([OS_USER, "vic"])


def test_cli_bad_token_is_refused(box: Box, home: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("--home", str(home), "auth", "user", "list", env={"MLBOX_TOKEN": "mlbx_nope"})
    assert result.exit_code == AuthError.exit_code
    assert result.stderr.startswith("error:") and "malformed" in result.stderr


def test_cli_unmapped_os_user_is_refused(box: Box, home: Path, cli_run, kernel_user) -> None:  # type: ignore[no-untyped-def]
    kernel_user("mallory")
    result = cli_run("--home", str(home), "auth", "user", "list")
    assert result.exit_code == AuthError.exit_code
    assert "mallory" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["[/x]", "[bold]x", "a[red]"])
def test_cli_error_line_shows_user_text_verbatim(box: Box, home: Path, cli_run, name: str) -> None:  # type: ignore[no-untyped-def]
    """Error messages quote user input; rich markup in it must be printed, not interpreted."""
    result = cli_run("--home", str(home), "auth", "user", "add", name, "--role", "viewer")
    assert result.exit_code == UsageError.exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert repr(name) in lines[0]
