"""Small shared widgets and text helpers: escaped cells, status in glyphs and words, the filterable table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from mlbox.tui.filters import NO_FILTER, Filter
from mlbox.types import printable

# state in glyph and word, never colour alone (NO_COLOR, 16 colours, screen readers)
GLYPHS = {
    "up": "✓ up", "down": "✗ down",
    "queued": "◌ queued", "running": "● running", "succeeded": "✓ succeeded", "finished": "✓ finished", "failed": "✗ failed",
    "cancelled": "⊘ cancelled", "timed_out": "⏱ timed_out", "killed": "✗ killed", "interrupted": "⊘ interrupted",
    "ok": "✓ ok", "drift": "! drift", "warn": "! warn", "alert": "! alert", "degraded": "! degraded",
}  # fmt: skip


def status(word: object) -> str:
    text = printable(word)
    return GLYPHS.get(text, text)


def cell(value: object) -> Text:
    """A value as a table cell: plain text, never markup; control and ANSI characters escaped."""
    if value is None:
        return Text("")
    if isinstance(value, bool):
        return Text("yes" if value else "")
    if isinstance(value, float):
        return Text(f"{value:.4g}")
    return Text(printable(value))


def size(n: int) -> str:
    """Bytes as a person reads them at a glance: MiB or GiB with one decimal (a box is rarely under 100 KiB)."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 100 << 10:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n >> 10} KiB"


class BoxTable(DataTable[Text]):
    """A DataTable of keyed rows with the filter applied; updated cell by cell when the row set is unchanged."""

    def __init__(self, columns: Sequence[str], key: str, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self.columns_shown = list(columns)
        self.key_column = key
        self.all_rows: list[Mapping[str, Any]] = []
        self.filter: Filter = NO_FILTER
        self.shown: list[Mapping[str, Any]] = []

    def on_mount(self) -> None:
        for column in self.columns_shown:
            self.add_column(column, key=column)

    def set_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.all_rows = list(rows)
        self._render_rows()

    def set_filter(self, value: Filter) -> None:
        self.filter = value
        self._render_rows()

    def selected(self) -> Mapping[str, Any] | None:
        if not self.shown or self.cursor_row < 0 or self.cursor_row >= len(self.shown):
            return None
        return self.shown[self.cursor_row]

    def _render_rows(self) -> None:
        shown = self.filter.apply(self.all_rows)
        keys = [str(r[self.key_column]) for r in shown]
        current = [str(k.value) for k in self.rows]
        with self.app.batch_update():
            if keys == current:  # same rows in the same order: touch only the cells that changed
                for old, new in zip(self.shown, shown, strict=True):
                    for column in self.columns_shown:
                        if old.get(column) != new.get(column):
                            self.update_cell(str(new[self.key_column]), column, cell(self._display(new, column)))
            else:
                row = self.cursor_row
                self.clear()
                for r in shown:
                    self.add_row(*(cell(self._display(r, c)) for c in self.columns_shown), key=str(r[self.key_column]))
                if shown:
                    self.move_cursor(row=min(max(row, 0), len(shown) - 1))
        self.shown = shown

    @staticmethod
    def _display(row: Mapping[str, Any], column: str) -> object:
        value = row.get(column)
        return status(value) if column in ("status", "state", "verdict") else value
