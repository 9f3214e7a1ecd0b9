"""Features: the latest version of every feature view, with classification and PII badges; `enter` opens one
in detail (fields, sample values masked by role, batches, lineage: tui/viewdetail.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import Input

from mlbox.tui.screens.base import TableScreen
from mlbox.tui.viewdetail import ViewDetailScreen


def badge(row: Mapping[str, Any]) -> str:
    """`[PII]` and the classification in words: never shown by colour alone."""
    return ("[PII] " if row["pii"] else "") + str(row["classification"] or "-")


class FeaturesScreen(TableScreen):
    """Feature views."""

    TITLE = "features"
    KEY = "view"
    COLUMNS = ("view", "version", "entity", "fields", "batches", "rows", "badges", "owner")
    BINDINGS: ClassVar[list[BindingType]] = [
        # `enter` as on Monitoring (or `o`): before the table's own enter, and left to the filter box while typing in it
        Binding("enter,o", "open", "open", id="mlbox.features.open", priority=True),
    ]

    def load(self) -> list[dict[str, Any]]:
        return self.client.features()

    def show(self, data: list[dict[str, Any]]) -> None:
        self.set_rows([{**r, "badges": badge(r)} for r in data])

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open":
            if not self.is_mounted or isinstance(self.focused, Input):
                return False  # typing a filter: enter applies it
            return None if self.table.selected() is None else True
        return True

    def on_data_table_row_highlighted(self) -> None:
        self.rebind("open")

    def action_open(self) -> None:
        row = self.table.selected()
        if row is not None:
            self.app.push_screen(ViewDetailScreen(str(row["view"])))
