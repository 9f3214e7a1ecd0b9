"""The `:` command line: `:runs status=failed since=24h` → a screen and a filter in the one filter grammar.

Pure: no Textual. A command is a screen name (or an alias) and filter terms; `since=24h` (also `m`,
`d`, `w`, or an ISO date) becomes a comparison on the screen's time column, fixed at the moment the
command is given. Everything else is passed to the filter grammar as typed (`mlbox.tui.filters`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta

from mlbox.errors import UsageError
from mlbox.tui import filters

# command word -> mode; the first name of each mode is the one the help line lists
NAMES = {
    "pulse": "pulse", "home": "pulse",
    "runs": "runs", "run": "runs",
    "models": "models", "model": "models",
    "deploy": "deployments", "deployments": "deployments", "dp": "deployments",
    "jobs": "jobs", "job": "jobs",
    "features": "features", "fs": "features",
    "monitor": "monitoring", "monitoring": "monitoring", "mon": "monitoring",
    "audit": "audit",
}  # fmt: skip
QUIT = ("q", "quit")
# the column `since=` compares on, per screen (Pulse is not a table; features have no time column)
TIME_COLUMNS = {"runs": "started_at", "models": "created_at", "deployments": "updated_at", "jobs": "submitted",
                "monitoring": "checked_at", "audit": "ts"}  # fmt: skip
HINT = "commands: :pulse :runs :models :deploy :jobs :features :monitor :audit :q — then filter terms, since=24h"
_SPAN = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Command:
    """Go to `mode` and filter its table by `filter` (filter-grammar text, "" for none); `quit` ends the app."""

    mode: str
    filter: str = ""
    quit: bool = False


def parse(text: str, now: datetime) -> Command:
    """Parse what follows the `:` (UsageError, one line and a hint, for anything it cannot do)."""
    text = text.strip().removeprefix(":").strip()
    if not text:
        raise UsageError("empty command", hint=HINT)
    word, _, rest = text.partition(" ")
    word = word.casefold()
    if word in QUIT and not rest.strip():
        return Command("", quit=True)
    mode = NAMES.get(word)
    if mode is None:
        raise UsageError(f"unknown command :{word}", hint=HINT)
    try:
        words = shlex.split(rest, posix=False)
    except ValueError as exc:
        raise UsageError(f"bad command {text!r}: {exc}", hint=HINT) from None
    if words and mode == "pulse":
        raise UsageError(":pulse takes no filter (it has no table)", hint=HINT)
    terms = [_since(mode, w[len("since="):], now) if w.casefold().startswith("since=") else w for w in words]
    joined = " ".join(terms)
    filters.parse(joined)  # syntax now, in the command line; unknown columns when the screen applies it
    return Command(mode, joined)


def _since(mode: str, value: str, now: datetime) -> str:
    column = TIME_COLUMNS.get(mode)
    if column is None:
        raise UsageError(f"{mode} has no time column for since=", hint="since= works on " + ", ".join(TIME_COLUMNS))
    span = _SPAN.match(value.strip().casefold())
    if span is not None:
        start = now - timedelta(**{_UNITS[span[2]]: int(span[1])})
        return f"{column}>={start.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    if filters.is_time(value):
        return f"{column}>={value}"
    raise UsageError(f"since={value}: give a span (30m, 24h, 7d, 2w) or an ISO date (2026-12-01)", hint=HINT)
