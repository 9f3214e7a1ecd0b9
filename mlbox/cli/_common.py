"""What every CLI module shares: global options, opening the box, the acting user, rendering.

Commands parse their arguments, call one service method and render the result as a table
or, with `--json`, as JSON on stdout. They never print-and-exit on errors: they raise
MlboxError and `main.run` turns it into one red line and an exit code.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from mlbox.config import Settings, load_settings
from mlbox.types import Actor

if TYPE_CHECKING:
    from mlbox.box import Box

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@dataclass
class State:
    home: str | None = None
    json: bool = False
    debug: bool = False


state = State()


def settings() -> Settings:
    return load_settings(state.home)


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@contextmanager
def open_box() -> Iterator[Box]:
    from mlbox.box import Box

    box = Box(settings())
    try:
        yield box
    finally:
        box.close()


def actor(box: Box, action: str | None = None) -> Actor:
    """The acting user (MLBOX_TOKEN's user, else the OS user's box user), checked for `action`."""
    from mlbox.security.roles import require

    token = os.environ.get("MLBOX_TOKEN")
    who = box.identity.authenticate(token) if token else box.identity.actor_for_os_user(os_user())
    if action:
        require(who, action)
    return who


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def table(rows: Sequence[dict[str, Any]], columns: Iterable[str], title: str | None = None) -> None:
    """Print rows as a rich table, or as a JSON list with --json."""
    if state.json:
        emit_json(list(rows))
        return
    from rich.table import Table

    cols = list(columns)
    out = Table(title=title, title_justify="left", header_style="bold")
    for col in cols:
        out.add_column(col)
    for row in rows:
        out.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in cols))
    console.print(out)
    if not rows:
        console.print("[dim](none)[/dim]")


def record(value: dict[str, Any], title: str | None = None) -> None:
    """Print one record as key: value lines, or as a JSON object with --json."""
    if state.json:
        emit_json(value)
        return
    if title:
        console.print(f"[bold]{title}[/bold]")
    width = max((len(k) for k in value), default=0)
    for key, val in value.items():
        shown = json.dumps(val, default=str) if isinstance(val, (dict, list)) else val
        console.print(f"  {key.ljust(width)}  {shown}")


def ok(message: str) -> None:
    """A one-line success message (suppressed with --json, where the command emits data instead)."""
    if not state.json:
        console.print(f"[green]✓[/green] {escape(message)}")


def done(value: dict[str, Any], message: str) -> None:
    """Finish a mutating command: the changed record as JSON with --json, else one success line."""
    if state.json:
        emit_json(value)
    else:
        ok(message)
