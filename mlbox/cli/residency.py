"""`mlbox privacy residency|region|transfer`: the box's residency, declared destination regions, transfer bases."""

from __future__ import annotations

from typing import Annotated

import typer

from mlbox.cli._common import actor, done, emit_json, open_box, state, table
from mlbox.security.residency import Residency

residency_app = typer.Typer(help="The box's data residency (ISO 3166 alpha-2 country).", no_args_is_help=True)
region_app = typer.Typer(help="Regions of destinations: path prefixes (mounted buckets) and webhook hosts.", no_args_is_help=True)
transfer_app = typer.Typer(help="Transfer bases that allow destinations outside the residency.", no_args_is_help=True)


@residency_app.command("show")
def residency_show() -> None:
    """Show the box's residency (none: destinations are not restricted)."""
    with open_box() as box:
        actor(box, "read")
        country = Residency(box.db, box.audit).country()
    done({"residency": country}, f"residency: {country or 'not set (destinations are not restricted)'}")


@residency_app.command("set")
def residency_set(country: Annotated[str, typer.Argument(help="ISO 3166 alpha-2 code, e.g. AE.")]) -> None:
    """Record the box's residency; exports, backups, packages and webhooks outside it are refused from now on."""
    with open_box() as box:
        who = actor(box, "box.admin")
        code = Residency(box.db, box.audit).set_country(who.name, country)
    done({"residency": code}, f"residency set to {code}")


@region_app.command("add")
def region_add(
    destination: Annotated[str, typer.Argument(help="A path prefix (e.g. /mnt/s3-eu) or a webhook host (hooks.example.com).")],
    region: Annotated[str, typer.Option("--region", help="ISO 3166 alpha-2 code of where it lies, e.g. DE.")],
) -> None:
    """Declare where a path prefix or webhook host lies (longest path prefix wins)."""
    with open_box() as box:
        who = actor(box, "box.admin")
        found = Residency(box.db, box.audit).declare(who.name, destination, region)
    done(found.__dict__, f"{found.kind} {found.destination} lies in {found.region}")


@region_app.command("list")
def region_list() -> None:
    """List the declared path prefixes and webhook hosts with their regions."""
    with open_box() as box:
        actor(box, "read")
        rows = [r.__dict__ for r in Residency(box.db, box.audit).regions()]
    if state.json:
        emit_json(rows)
    else:
        table(rows, ["kind", "destination", "region"], title="declared regions")


@region_app.command("remove")
def region_remove(destination: Annotated[str, typer.Argument(help="The declared path prefix or host.")]) -> None:
    """Forget a declared path prefix or host."""
    with open_box() as box:
        who = actor(box, "box.admin")
        Residency(box.db, box.audit).undeclare(who.name, destination)
    done({"removed": destination}, f"removed the region of {destination}")


@transfer_app.command("add")
def transfer_add(
    to: Annotated[str, typer.Option("--to", help="Region the data may go to (ISO 3166 alpha-2, or 'unknown').")],
    basis: Annotated[str, typer.Option("--basis", help='Legal basis, e.g. "adequacy decision" or "SCCs signed 2026-01-05".')],
    destination: Annotated[str | None, typer.Option("--destination", help="Only destinations under this path or URL prefix.")] = None,
) -> None:
    """Record a transfer basis: destinations in that region (under the prefix, if given) are allowed."""
    with open_box() as box:
        who = actor(box, "box.admin")
        found = Residency(box.db, box.audit).add_transfer(who.name, to, basis, destination)
    done(found.as_dict(), f"transfer basis {found.id}: to {found.region} ({found.basis})")


@transfer_app.command("list")
def transfer_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked bases.")] = False,
) -> None:
    """List the transfer bases in force (with --all, revoked ones too)."""
    with open_box() as box:
        actor(box, "read")
        rows = [b.as_dict() for b in Residency(box.db, box.audit).transfers(include_revoked=all_)]
    if state.json:
        emit_json(rows)
    else:
        table(rows, ["id", "region", "basis", "destination", "created_at", "created_by", "revoked_at"], title="transfer bases")


@transfer_app.command("revoke")
def transfer_revoke(basis_id: Annotated[int, typer.Argument(help="The basis id (`mlbox privacy transfer list`).")]) -> None:
    """Revoke a transfer basis: destinations it allowed are refused from now on."""
    with open_box() as box:
        who = actor(box, "box.admin")
        found = Residency(box.db, box.audit).revoke_transfer(who.name, basis_id)
    done(found.as_dict(), f"revoked transfer basis {found.id} (to {found.region})")


def register(app: typer.Typer) -> None:
    """Add the three groups under `mlbox privacy`."""
    app.add_typer(residency_app, name="residency")
    app.add_typer(region_app, name="region")
    app.add_typer(transfer_app, name="transfer")
