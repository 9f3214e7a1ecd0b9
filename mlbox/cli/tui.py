"""`mlbox tui`: the terminal UI (Textual is imported only when this command runs, so the CLI starts fast)."""

from __future__ import annotations

from typing import Annotated

import typer

from mlbox.cli._common import actor, open_box, settings, token


def tui(
    refresh: Annotated[float, typer.Option("--refresh", min=0.5, help="Seconds between live refreshes of the open screen.")] = 2.0,
    mouse: Annotated[bool, typer.Option("--mouse/--no-mouse", help="Mouse support (off keeps native text selection over SSH).")] = False,
) -> None:
    """Run the box from a terminal: pulse, runs, models, deployments, jobs, features, monitoring, audit (keys 1-8, ? help)."""
    with open_box() as box:
        actor(box, "read")  # the CLI's own check first: an unknown user or a bad token is one red line, not a crash
    from mlbox.tui.app import MlboxApp
    from mlbox.tui.local import LocalClient

    client = LocalClient(settings(), token=token())
    MlboxApp(client, me=client.me(), refresh_s=refresh).run(mouse=mouse)


def register(app: typer.Typer) -> None:
    app.command("tui")(tui)
