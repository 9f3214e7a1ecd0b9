"""Monitoring: the newest drift, quality and A/B checks, one row per variant, verdict in glyph and word (read-only)."""

from __future__ import annotations

from mlbox.tui.client import Page
from mlbox.tui.screens.base import TableScreen


class MonitoringScreen(TableScreen):
    """Stored monitoring checks, newest first."""

    TITLE = "monitoring"
    KEY = "key"
    COLUMNS = ("id", "deployment", "kind", "variant", "verdict", "share", "rows", "features", "checked_at")

    def load(self) -> Page:
        return self.client.checks(self.limit)

    def show(self, data: Page) -> None:
        self.set_rows(data.rows, data.more)
