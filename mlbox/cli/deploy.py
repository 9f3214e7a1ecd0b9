"""`mlbox deploy`: deployments with primary, canary, shadow; promote and roll back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mlbox.cli._common import actor, console, done, emit_json, open_box, state, table
from mlbox.cli.auth import require_scope, token_scopes

if TYPE_CHECKING:
    from mlbox.box import Box

app = typer.Typer(help="Deployments: primary, canary (weighted, sticky), shadow; promote, rollback.", no_args_is_help=True)
STICKY_HELP = "Request field naming each row's entity: pins it to one variant and labels it in the log (need not be a model input)."
COLUMNS = ["name", "primary_model", "canary_model", "canary_weight", "sticky_key", "shadow_model", "previous_primary", "revision", "updated_at"]


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Deployment name (lowercase, digits, _).")],
    model: Annotated[str, typer.Option("--model", "-m", help="NAME:VERSION (or NAME:production) to serve as primary.")],
    sticky_key: Annotated[str | None, typer.Option("--sticky-key", help=STICKY_HELP)] = None,
) -> None:
    """Create a deployment serving one model version."""
    with open_box() as box:
        d = box.deployments.create(name, model, manager(box, name), sticky_key)
    done(d.as_dict(), f"deployment {d.name} serves {d.primary_model}")


@app.command("canary")
def canary(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    model: Annotated[str, typer.Option("--model", "-m", help="NAME:VERSION to send canary traffic to.")],
    weight: Annotated[float, typer.Option("--weight", "-w", help="Percent of traffic for the canary (0-100).")] = 10.0,
    sticky_key: Annotated[str | None, typer.Option("--sticky-key", help=STICKY_HELP + " Default: keep the current one.")] = None,
) -> None:
    """Send a share of traffic to a canary model (set the weight again to change it)."""
    with open_box() as box:
        d = box.deployments.canary(name, model, weight, manager(box, name), sticky_key)
    done(d.as_dict(), f"{d.name}: {d.canary_weight:g}% to {d.canary_model}" + (f", sticky by {d.sticky_key}" if d.sticky_key else ""))


@app.command("sticky")
def sticky(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    key: Annotated[str | None, typer.Argument(help="Request field (need not be a model input).")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the sticky key.")] = False,
) -> None:
    """Set the sticky key: every request routed by its first row's value, every row's value logged."""
    from mlbox.errors import UsageError

    with open_box() as box:
        who = actor(box, "deploy.manage", scoped=True)  # before anything else, argument checks included
        require_scope(box, "deployment", [name])
        if bool(key) == remove:
            raise UsageError("give a KEY, or --remove")
        d = box.deployments.sticky(name, None if remove else key, who.name)
    done(d.as_dict(), f"{d.name}: sticky key {d.sticky_key or 'removed'}")


@app.command("shadow")
def shadow(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="NAME:VERSION to mirror traffic to.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Stop shadowing.")] = False,
) -> None:
    """Mirror every request to a shadow model; its answers are logged, never returned."""
    from mlbox.errors import UsageError

    with open_box() as box:
        who = actor(box, "deploy.manage", scoped=True)  # before anything else, argument checks included
        require_scope(box, "deployment", [name])
        if bool(model) == remove:
            raise UsageError("give --model NAME:VERSION, or --remove")
        d = box.deployments.shadow(name, None if remove else model, who.name)
    done(d.as_dict(), f"{d.name}: shadow {d.shadow_model or 'removed'}")


@app.command("promote")
def promote(name: Annotated[str, typer.Argument(help="Deployment name.")]) -> None:
    """Make the canary the primary (the old primary is kept for rollback)."""
    with open_box() as box:
        d = box.deployments.promote(name, manager(box, name))
    done(d.as_dict(), f"{d.name} now serves {d.primary_model} (was {d.previous_primary})")


@app.command("rollback")
def rollback(name: Annotated[str, typer.Argument(help="Deployment name.")]) -> None:
    """Canary weight to 0; or, without canary traffic, the previous primary back."""
    with open_box() as box:
        d = box.deployments.rollback(name, manager(box, name))
    done(d.as_dict(), f"{d.name}: primary {d.primary_model}, canary {d.canary_model or '-'} at {d.canary_weight:g}%")


@app.command("status")
def status(name: Annotated[str | None, typer.Argument(help="Deployment name (default: all).")] = None) -> None:
    """Deployments with their models, weights and revision."""
    with open_box() as box:
        actor(box, "read", scoped=True)
        require_scope(box, "deployment", [name] if name else [])
        scopes = token_scopes(box)  # a scoped token lists only its own deployments
        deps = box.deployments
        shown = [d for d in deps.all() if scopes is None or scopes.allows("deployment", d.name)]
        rows = [deps.get(name).as_dict()] if name else [d.as_dict() for d in shown]
    table(rows, COLUMNS)


@app.command("log")
def log(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    limit: Annotated[int, typer.Option("--limit", "-n", help="Records per page (1-1000).")] = 20,
    before: Annotated[str | None, typer.Option("--before", help="Page cursor: the `next` a page before printed.")] = None,
    variant: Annotated[str | None, typer.Option("--variant", help="Only primary, canary or shadow records.")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only failed requests.")] = False,
) -> None:
    """The prediction log, newest first, a page at a time (protected inputs masked without features.read_pii)."""
    from rich.markup import escape

    from mlbox.monitor.logpage import answer
    from mlbox.privacy.predictions import prediction_page

    with open_box() as box:
        who = actor(box, "read", scoped=True)
        require_scope(box, "deployment", [name])
        found = prediction_page(box, who, name, limit=limit, before=before, variant=variant, errors=errors)
    if state.json:
        emit_json(found)
        return
    rows = [{**r, "rows": len(r["inputs"]) if isinstance(r["inputs"], list) else None, "answer": answer(r["outputs"])}
            for r in found["records"]]  # fmt: skip
    table(rows, ["ts", "variant", "model", "latency_ms", "rows", "answer", "error", "request_id"],
          f"{name}: {len(rows)} of {found['total']:,} logged records, newest first")  # fmt: skip
    hidden = found["masked"] or found["refused"]
    if hidden:
        console.print(f"[dim]inputs {'masked' if found['masked'] else 'left out'} (protected): {escape(', '.join(hidden))}[/dim]")
    if found["next"]:
        console.print(f"[dim]next page: --before {found['next']}[/dim]", soft_wrap=True)


def manager(box: Box, name: str) -> str:
    """The acting user's name, checked for deploy.manage and, by a scoped token, for deployment `name`."""
    who = actor(box, "deploy.manage", scoped=True)
    require_scope(box, "deployment", [name])
    return who.name
