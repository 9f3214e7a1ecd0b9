"""Runs: tracked training runs, newest first (read-only)."""

from __future__ import annotations

from mlbox.tui.client import Page
from mlbox.tui.screens.base import TableScreen


class RunsScreen(TableScreen):
    """Training runs with their status and duration."""

    TITLE = "runs"
    COLUMNS = ("id", "experiment", "name", "status", "user", "started_at", "duration_s")

    def load(self) -> Page:
        return self.client.runs(self.limit)

    def show(self, data: Page) -> None:
        self.set_rows(data.rows, data.more)
