"""Runs: tracked training runs, newest first; `space` marks up to two, `c` compares them (tui/compare.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from mlbox.tui.client import Page
from mlbox.tui.compare import CompareScreen  # imported with the app: its binding ids are known to `tui.keymap`
from mlbox.tui.screens.base import TableScreen

MARKS = ("✓A", "✓B")  # glyph and letter: reads without colour, and names the run's column in the comparison


class RunsScreen(TableScreen):
    """Training runs with their status and duration; two of them marked for comparison."""

    TITLE = "runs"
    COLUMNS = ("mark", "id", "experiment", "name", "status", "user", "started_at", "duration_s")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "mark", "mark", id="mlbox.runs.mark"),
        Binding("c", "compare", "compare", id="mlbox.runs.compare"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.marked: list[str] = []  # run ids, oldest mark first: at most two, a third replaces the oldest
        self.page: Sequence[Mapping[str, Any]] = ()  # the last page loaded, before the marks are put on it
        self.page_more = False

    def load(self) -> Page:
        return self.client.runs(self.limit)

    def show(self, data: Page) -> None:
        self.page, self.page_more = data.rows, data.more
        self._paint()

    def _paint(self) -> None:
        marks = dict(zip(self.marked, MARKS, strict=False))
        self.set_rows([{**r, "mark": marks.get(str(r["id"]), "")} for r in self.page], self.page_more)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("mark", "compare"):
            return None if not self.is_mounted or self.table.selected() is None else True  # dimmed without a run
        return True

    def on_data_table_row_highlighted(self) -> None:
        self.rebind("mark")
        self.rebind("compare")

    def action_mark(self) -> None:
        row = self.table.selected()
        if row is None:
            return
        run_id = str(row["id"])
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked = [*self.marked, run_id][-len(MARKS) :]
        self._paint()

    def compared(self) -> list[str]:
        """The runs `c` compares: the two marked; one marked and the selected one; else the selected one alone."""
        row = self.table.selected()
        chosen = list(self.marked)
        if len(chosen) < len(MARKS) and row is not None and str(row["id"]) not in chosen:
            chosen.append(str(row["id"]))
        return chosen

    def action_compare(self) -> None:
        chosen = self.compared()
        if chosen:
            self.app.push_screen(CompareScreen(chosen))
