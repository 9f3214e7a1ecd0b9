"""`mlbox auth`: users, roles and API tokens."""

from __future__ import annotations

import shlex
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

import typer

from mlbox.cli._common import actor, console, done, emit_json, ok, open_box, settings, state, table, token
from mlbox.errors import UsageError
from mlbox.types import parse_duration

if TYPE_CHECKING:
    from mlbox.box import Box
    from mlbox.security.scopes import ScopeKind, Scopes

app = typer.Typer(help="Users, roles and API tokens.", no_args_is_help=True)
user_app = typer.Typer(help="Box users and their roles.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for the HTTP API and scripts (MLBOX_TOKEN).", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")

USER_COLUMNS = ["name", "role", "os_user", "created_at", "disabled_at"]
TOKEN_COLUMNS = ["id", "user", "role", "state", "scope", "expires_at", "last_used_at", "description"]


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str, typer.Option("--role", "-r", help="admin, ml-engineer, data-scientist, viewer or service.")],
    os_user: Annotated[str | None, typer.Option("--os-user", help="OS account that acts as this user in the CLI.")] = None,
) -> None:
    """Add a user with a role."""
    with open_box() as box:
        user = box.identity.add_user(actor(box, "auth.manage").name, name, role, os_user)
    done(user.as_dict(), f"added {user.name} as {user.role}")


@user_app.command("list")
def user_list() -> None:
    """List users."""
    with open_box() as box:
        actor(box, "read")
        users = box.identity.users()
    table([u.as_dict() for u in users], USER_COLUMNS)


@user_app.command("role")
def user_role(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str, typer.Argument(help="New role.")],
) -> None:
    """Change a user's role."""
    with open_box() as box:
        user = box.identity.set_role(actor(box, "auth.manage").name, name, role)
    done(user.as_dict(), f"{user.name} is now {user.role}")


@user_app.command("disable")
def user_disable(name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Disable a user and revoke all their tokens."""
    with open_box() as box:
        user = box.identity.disable_user(actor(box, "auth.manage").name, name)
    done(user.as_dict(), f"disabled {user.name}; their tokens are revoked")


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", "-u", help="User the token acts as.")],
    role: Annotated[str | None, typer.Option("--role", "-r", help="Role of the token (default: the user's; never more).")] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime such as 30d or 12h, or 'never' (default: auth.token_ttl_days).")
    ] = None,
    description: Annotated[str, typer.Option("--description", "-d", help="What the token is for.")] = "",
    deployments: Annotated[
        list[str] | None,
        typer.Option("--deployment", help="Limit the token to this deployment (repeatable; with any scope, only those named)."),
    ] = None,
    views: Annotated[
        list[str] | None, typer.Option("--view", help="Limit the token to this feature view (repeatable; online read and push).")
    ] = None,
) -> None:
    """Create an API token. It is shown once and stored only as a hash."""
    never = expires == "never"
    seconds = None if expires is None or never else parse_duration(expires)
    with open_box() as box:
        who = actor(box, "auth.manage")
        info, secret = box.identity.create_token(
            who.name, user, role, seconds, never, description, deployments=deployments or (), views=views or ()
        )
    if state.json:
        emit_json({**info.as_dict(), "token": secret})
        return
    scope = info.as_dict()["scope"]
    ok(f"token {info.id} for {info.user} ({info.role}), scope {scope}, expires {info.expires_at or 'never'}")
    console.print("  Copy it now; it is not shown again:")
    console.print(f"  [bold]{secret}[/bold]", soft_wrap=True)


@token_app.command("list")
def token_list(user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's tokens.")] = None) -> None:
    """List tokens (never their secrets)."""
    with open_box() as box:
        actor(box, "auth.manage")
        tokens = box.identity.tokens(user)
    table([t.as_dict() for t in tokens], TOKEN_COLUMNS, default=TOKEN_COLUMNS[:6])


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="Token id from `mlbox auth token list`.")]) -> None:
    """Revoke a token at once."""
    if token_id.startswith("mlbx_"):
        raise UsageError("pass the token id (first column of `mlbox auth token list`), not the token itself")
    with open_box() as box:
        info = box.identity.revoke_token(actor(box, "auth.manage").name, token_id)
    done(info.as_dict(), f"revoked token {info.id} of {info.user}")


@app.command("selfsigned")
def selfsigned(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for cert.pem and key.pem (default: <box>/tls).")] = None,
    hosts: Annotated[
        list[str] | None,
        typer.Option("--host", help="DNS name or IP address to cover (repeatable; default: localhost, 127.0.0.1, ::1, this host)."),
    ] = None,
    days: Annotated[int, typer.Option("--days", help="Days the certificate is valid.")] = 90,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing cert.pem/key.pem.")] = False,
) -> None:
    """Write a self-signed TLS certificate and key (0600) for trying `mlbox serve` over HTTPS."""
    from mlbox.clock import now
    from mlbox.security.certs import default_hosts, generate_selfsigned

    # no box permission is checked: this only writes two files, and the file system decides who may write there
    folder = (out or settings().home / "tls").absolute()
    info = generate_selfsigned(folder, list(hosts or default_hosts()), days, now(), force=force)
    cert, key = shlex.quote(str(info.cert)), shlex.quote(str(info.key))
    line = f"mlbox serve --ssl-certfile {cert} --ssl-keyfile {key}"
    if state.json:
        emit_json({**info.as_dict(), "serve": line})
        return
    ok(f"self-signed certificate for {', '.join(info.hosts)}, valid until {info.not_after:%Y-%m-%d}")
    console.print(f"  certificate {info.cert}\n  key         {info.key} (mode 0600)\n  sha256      {info.sha256}", soft_wrap=True, highlight=False)
    console.print("  Serve with it:")
    console.print(f"  [bold]{line}[/bold]", soft_wrap=True, highlight=False)
    console.print(f"  Clients trust it with: curl --cacert {cert} https://localhost:3000/healthz", soft_wrap=True, highlight=False)


def require_scope(box: Box, kind: ScopeKind, names: Iterable[str]) -> None:
    """When the CLI acts by a scoped token, refuse (403, audited) a `kind` resource it is not scoped to.
    Acting as the OS user's box user, or by an unscoped token, nothing is refused here."""
    given = token()
    if not given:
        return
    grant = box.identity.grant(given, touch=False)
    from mlbox.security.scopes import refusal

    denied = refusal(grant.scopes, [(kind, n) for n in names])
    if denied is not None:
        box.audit.record_throttled(grant.actor.name, "auth.denied", "scope", {"via": "cli", "reason": denied.message})
        raise denied


def token_scopes(box: Box) -> Scopes | None:
    """The scopes of the token the CLI acts by (None: unrestricted, or no token)."""
    given = token()
    return box.identity.grant(given, touch=False).scopes if given else None
