"""`mlbox tui`: the terminal UI (Textual is imported only when this command runs, so the CLI starts fast)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mlbox.cli._common import actor, open_box, settings, state, token

if TYPE_CHECKING:
    from mlbox.tui.client import BoxClient


def tui(
    refresh: Annotated[float, typer.Option("--refresh", min=0.5, help="Seconds between live refreshes of the open screen.")] = 2.0,
    mouse: Annotated[bool, typer.Option("--mouse/--no-mouse", help="Mouse support (off keeps native text selection over SSH).")] = False,
    url: Annotated[str | None, typer.Option("--url", help="Steer a remote box through its `mlbox serve` (https://host:3000), with a token.")] = None,
    token_file: Annotated[str | None, typer.Option("--token-file", help="The API token to act with (mode 0600); else MLBOX_TOKEN.")] = None,
    cafile: Annotated[str | None, typer.Option("--cafile", help="With --url: the CA (or self-signed) certificate to verify the server by.")] = None,
) -> None:
    """Run the box from a terminal: pulse, runs, models, deployments, jobs, features, monitoring, audit (keys 1-8, ? help)."""
    if token_file:
        state.token_file = token_file
    if url is None:
        if cafile:
            from mlbox.errors import UsageError

            raise UsageError("--cafile goes with --url", hint="on the box itself the TUI reads the box directly")
        with open_box() as box:
            actor(box, "read")  # the CLI's own check first: an unknown user or a bad token is one red line, not a crash
        from mlbox.tui.local import LocalClient

        client: BoxClient = LocalClient(settings(), token=token())
    else:
        given = token()
        if not given:
            from mlbox.errors import UsageError

            raise UsageError("--url needs a token", hint="pass --token-file F (mode 0600) or set MLBOX_TOKEN")
        from mlbox.tui.remote import RemoteClient

        client = RemoteClient(url, given, cafile=cafile)
    me = client.me()  # a bad token or an unreachable server is one red line here, before the screen opens
    from mlbox.tui import keymap
    from mlbox.tui.app import MlboxApp

    keys = keymap.parse(str(settings()["tui.keymap"]), keymap.bindings())  # a bad remap: one red line, no screen
    MlboxApp(client, me=me, refresh_s=refresh, keymap=keys).run(mouse=mouse)


def register(app: typer.Typer) -> None:
    app.command("tui")(tui)
