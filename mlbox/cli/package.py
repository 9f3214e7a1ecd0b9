"""`mlbox package`: build a Bento from a deployment."""

from __future__ import annotations

from typing import Annotated

import typer

from mlbox.cli._common import actor, console, done, open_box, state


def package(
    name: Annotated[str, typer.Argument(help="Deployment to package.")],
    token_ttl: Annotated[str | None, typer.Option("--token-ttl", help="Lifetime of the Bento's token, e.g. 90d (default: until revoked).")] = None,
) -> None:
    """Build a Bento (offline) with the deployment's models, the routing service and its own service token."""
    from mlbox.package import build_package
    from mlbox.types import parse_duration

    days = None if token_ttl is None else max(1, parse_duration(token_ttl) // 86400)
    with open_box() as box:
        who = actor(box, "deploy.manage")
        actor(box, "auth.manage")  # it makes a user and a token
        with console.status("bentoml build", spinner="dots"):
            result = build_package(box, name, who.name, token_ttl_days=days)
        home = box.paths.home
    done(result.__dict__, f"built {result.tag} with {', '.join(result.models)}")
    if not state.json:
        console.print(f"  its token (user {result.user}, id {result.token_id}; shown once): {result.token}")
        console.print(f"  run it: BENTOML_HOME={home / 'bentoml'} bentoml serve {result.tag} --port 3000")


def register(app: typer.Typer) -> None:
    app.command()(package)
