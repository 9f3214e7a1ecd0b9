"""Features: the latest version of every feature view, with classification and PII badges (read-only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlbox.tui.screens.base import TableScreen


def badge(row: Mapping[str, Any]) -> str:
    """`[PII]` and the classification in words: never shown by colour alone."""
    return ("[PII] " if row["pii"] else "") + str(row["classification"] or "-")


class FeaturesScreen(TableScreen):
    """Feature views."""

    TITLE = "features"
    KEY = "view"
    COLUMNS = ("view", "version", "entity", "fields", "batches", "rows", "badges", "owner")

    def load(self) -> list[dict[str, Any]]:
        return self.client.features()

    def show(self, data: list[dict[str, Any]]) -> None:
        self.set_rows([{**r, "badges": badge(r)} for r in data])
