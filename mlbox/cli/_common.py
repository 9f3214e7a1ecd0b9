"""What every CLI module shares: global options, opening the box, the acting user, rendering.

Commands parse their arguments, call one service method and render the result as a table
or, with `--json`, as JSON on stdout. They never print-and-exit on errors: they raise
MlboxError and `main.run` turns it into one red line and an exit code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from mlbox.config import Settings, load_settings, token_from_env
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
    wide: bool = False
    token_file: str | None = None


state = State()


def settings() -> Settings:
    return load_settings(state.home)


def os_user() -> str:
    """The effective OS user, from the kernel (never LOGNAME/USER: any process can set those)."""
    from mlbox.security import osuser

    return osuser.effective_os_user()


def token() -> str | None:
    """The API token the CLI acts with: `--token-file`'s content, else MLBOX_TOKEN, else None."""
    if state.token_file:
        from mlbox.security.osuser import read_token_file

        return read_token_file(state.token_file)
    return token_from_env()


@contextmanager
def open_box() -> Iterator[Box]:
    from mlbox.box import Box

    box = Box(settings())
    try:
        yield box
    finally:
        box.close()


SCOPED_COMMANDS = "predict, features get and deploy (their deployments and views)"


def actor(box: Box, action: str | None = None, *, scoped: bool = False) -> Actor:
    """The acting user (the token's user, else the effective OS user's box user), checked for `action`.

    A scoped token (`auth token create --deployment/--view`) runs only commands that check its scope
    against the resources they name (`scoped=True`: predict, features get, deploy); on any other
    command, which could reach resources outside it, it is refused."""
    from mlbox.errors import PermissionDenied
    from mlbox.security.roles import require

    given = token()
    if given:
        grant = box.identity.grant(given)
        who = grant.actor
        if grant.scopes is not None and not scoped:
            box.audit.record_throttled(who.name, "auth.denied", "scope", {"via": "cli", "reason": "command not scoped"})
            raise PermissionDenied(
                f"{who.name}'s token is scoped ({' '.join(grant.scopes.as_words())}); it may run only {SCOPED_COMMANDS}",
                hint="use an unscoped token for this command",
            )
    else:
        who = box.identity.actor_for_os_user(os_user())
    if action:
        try:
            require(who, action)
        except PermissionDenied:  # audited, at most once a minute per user and action (a refusal is cheap to repeat)
            box.audit.record_throttled(who.name, "auth.denied", action, {"role": who.role, "via": "cli"})
            raise
    return who


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def table(
    rows: Sequence[dict[str, Any]],
    columns: Iterable[str],
    title: str | None = None,
    *,
    default: Sequence[str] | None = None,
) -> None:
    """Print rows as a table that fits the terminal, or as a JSON list with --json.

    `default` names the columns worth showing when space is short (all when None); the rest
    appear with --wide. Identifiers stay whole; other values wrap (see `_tables.layout`).
    """
    if state.json:
        emit_json(list(rows))
        return
    from rich.table import Table
    from rich.text import Text

    from mlbox.cli._tables import layout

    cols = list(columns)
    cells = {c: [_cell(row.get(c)) for row in rows] for c in cols}
    plan = layout(cols, cells, console.width, default=default, wide=state.wide)
    out = Table(title=title, title_justify="left", header_style="bold")
    for col, width, wraps in zip(plan.columns, plan.widths, plan.wraps, strict=True):
        out.add_column(col, width=width, no_wrap=not wraps, overflow="fold")
    for i in range(len(rows)):
        out.add_row(*(Text(cells[c][i]) for c in plan.columns))  # values are data, never rich markup
    target = Console(highlight=False, width=plan.total) if plan.total > console.width else console
    target.print(out)
    if not rows:
        console.print("[dim](none)[/dim]")
    if plan.hidden:
        console.print(f"[dim]{len(plan.hidden)} more column(s): {escape(', '.join(plan.hidden))} (--wide shows them)[/dim]")


def _cell(value: Any) -> str:
    """A value as a table shows it: floats to 6 decimals (metrics), never in exponent form for big ones."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value) and abs(value) < 1e15:
        return str(round(value, 6))
    return str(value)


def set_wide(_ctx: Any, _param: Any, value: bool) -> None:
    """Callback of every table command's --wide flag (the global `mlbox --wide` sets the same state)."""
    if value:
        state.wide = True


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
