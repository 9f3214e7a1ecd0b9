"""`mlbox package`: build a Bento from a deployment."""

from __future__ import annotations

from typing import Annotated

import typer

from mlbox.cli._common import actor, console, done, open_box, state


def package(name: Annotated[str, typer.Argument(help="Deployment to package.")]) -> None:
    """Build a Bento (offline) with the deployment's models and the routing service; run it with `bentoml serve`."""
    from mlbox.package import build_package

    with open_box() as box:
        who = actor(box, "deploy.manage")
        with console.status("bentoml build", spinner="dots"):
            result = build_package(box, name, who.name)
        home = box.paths.home
    done(result.__dict__, f"built {result.tag} with {', '.join(result.models)}")
    if not state.json:
        console.print(f"  run it: BENTOML_HOME={home / 'bentoml'} bentoml serve {result.tag} --port 3000")


def register(app: typer.Typer) -> None:
    app.command()(package)
