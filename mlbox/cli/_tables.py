"""Tables that fit the terminal: which columns show, how wide each is, and the `--wide` option.

People run mlbox over SSH in 80 columns. A table keeps identifiers (names, ids, refs) whole
on one line, wraps other values, and drops its least important columns until it fits,
saying which; `--wide` shows every column at its natural width.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len

# Values people copy and paste: never wrapped, never cut. A table's first column is one too.
IDENTIFIERS = frozenset(
    {"id", "name", "model", "view", "run", "user", "deployment", "file", "version", "seq", "experiment", "entity",
     "primary_model", "canary_model", "shadow_model", "actor", "role", "status", "state"}
)  # fmt: skip
# Dropped first, in this order, when a table does not say which of its columns matter.
LOW_PRIORITY = (
    "created_by", "default", "owner", "pii", "classification", "commit_seq", "hash", "source", "worker", "project",
    "gpus", "last_used_at", "disabled_at", "os_user", "previous_primary", "revision", "updated_at", "through_seq",
    "flavor", "archived", "size", "attempts", "started", "device", "created_at", "description", "help",
)  # fmt: skip
WRAP_MIN = 12  # a wrapped column is never squeezed below this (or its header) while others could go instead
COMFORTABLE = 24  # low-priority columns go before wrapped text gets narrower than this
WIDE_HELP = "Show every column at full width (tables otherwise fit the terminal)."

# Commands that print tables get `--wide` (tests/test_tables.py keeps this equal to the commands that call table()).
TABLE_COMMANDS = frozenset(
    {"audit list", "auth user list", "auth token list", "settings", "deploy status", "deploy log", "features plan", "features apply",
     "features list", "features show", "features materialize", "features flush", "features get", "features sql", "jobs list",
     "models list", "models show", "models diff", "runs list", "runs compare", "monitor check", "monitor history",
     "monitor quality", "monitor serving", "monitor actions", "privacy report", "privacy record", "privacy erase",
     "privacy purge", "privacy region list", "privacy transfer list", "jobs schedules"}
)  # fmt: skip


@dataclass(frozen=True)
class Layout:
    """The columns a table shows, each one's content width and whether it wraps, and the columns left out."""

    columns: tuple[str, ...]
    widths: tuple[int, ...]
    wraps: tuple[bool, ...]
    hidden: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(self.widths) + overhead(len(self.columns))


def overhead(n: int) -> int:
    """Characters a rich table adds around n columns: one space each side and a border between and around."""
    return 3 * n + 1


def natural_width(header: str, cells: Sequence[str]) -> int:
    return max([cell_len(header), *(cell_len(line) for cell in cells for line in cell.splitlines() or [""])])


def is_identifier(name: str, position: int) -> bool:
    return position == 0 or name in IDENTIFIERS


def _drop_order(columns: Sequence[str]) -> list[str]:
    """Columns in the order they go when space runs out: low-priority ones, then others from the right."""
    rest = [c for i, c in enumerate(columns) if i > 0]
    low = sorted((c for c in rest if c in LOW_PRIORITY), key=LOW_PRIORITY.index)
    plain = [c for c in reversed(rest) if c not in LOW_PRIORITY and not is_identifier(c, 1)]
    idents = [c for c in reversed(rest) if c not in LOW_PRIORITY and is_identifier(c, 1)]
    return [*low, *plain, *idents]


def layout(
    columns: Sequence[str],
    cells: dict[str, list[str]],
    width: int,
    *,
    default: Sequence[str] | None = None,
    wide: bool = False,
) -> Layout:
    """Choose and size the columns of a table `width` characters wide.

    `default` names the columns shown without --wide (all when None); more are dropped while
    the table would not fit with identifiers whole and other columns at least WRAP_MIN wide.
    """
    order = list(columns)
    natural = {c: natural_width(c, cells[c]) for c in order}
    ident = {c: is_identifier(c, i) for i, c in enumerate(order)}
    if wide:
        return Layout(tuple(order), tuple(natural[c] for c in order), (False,) * len(order), ())
    shown = [c for c in order if default is None or c in default or c == order[0]]

    def least(floor: int) -> dict[str, int]:
        return {c: natural[c] if ident[c] else max(cell_len(c), min(natural[c], floor)) for c in order}

    def fits(minimum: dict[str, int]) -> bool:
        return sum(minimum[c] for c in shown) + overhead(len(shown)) <= width

    # first leave out low-priority columns while text could still be read comfortably, then anything
    comfortable, minimum = least(COMFORTABLE), least(WRAP_MIN)
    for victim in [c for c in _drop_order(shown) if c in LOW_PRIORITY]:
        if fits(comfortable):
            break
        shown.remove(victim)
    for victim in _drop_order(shown):
        if fits(minimum):
            break
        shown.remove(victim)
    widths = {c: minimum[c] for c in shown}
    spare = width - overhead(len(shown)) - sum(widths.values())
    growing = [c for c in shown if widths[c] < natural[c]]
    while spare > 0 and growing:  # share what is left, narrowest first, up to each column's natural width
        c = min(growing, key=lambda name: widths[name])
        widths[c] += 1
        spare -= 1
        if widths[c] >= natural[c]:
            growing.remove(c)
    return Layout(
        columns=tuple(shown),
        widths=tuple(widths[c] for c in shown),
        wraps=tuple(not ident[c] for c in shown),
        hidden=tuple(c for c in order if c not in shown),
    )


def add_wide_options(group: Any, template: Any, set_wide: Callable[[Any, Any, bool], None], prefix: tuple[str, ...] = ()) -> None:
    """Give every command in TABLE_COMMANDS below `group` its own `--wide`, a copy of the root's `template` flag.

    A copy of the root's parameter object rather than a new one: typer builds its parameters
    from function signatures with its own vendored click, so a copy is the one kind sure to fit.
    Its value goes to `set_wide`, not to the command function.
    """
    for name, command in getattr(group, "commands", {}).items():
        path = (*prefix, name)
        if getattr(command, "commands", None) is not None:
            add_wide_options(command, template, set_wide, path)
        elif " ".join(path) in TABLE_COMMANDS and not any(p.name == "wide" for p in command.params):
            flag = copy.copy(template)
            flag.expose_value = False
            flag.callback = set_wide
            command.params.append(flag)
