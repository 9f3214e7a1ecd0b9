"""Monitoring: the newest drift, quality and A/B checks per variant, verdict in glyph and word; `C` checks drift now."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType

from mlbox.tui.client import Page, Row
from mlbox.tui.confirm import Change, Confirm
from mlbox.tui.screens.base import TableScreen


class MonitoringScreen(TableScreen):
    """Stored monitoring checks, newest first."""

    TITLE = "monitoring"
    KEY = "key"
    COLUMNS = ("id", "deployment", "kind", "variant", "verdict", "share", "rows", "features", "checked_at")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("C", "drift_check", "check drift now", id="mlbox.monitor.check"),
        Binding("o", "open_check", "open check", id="mlbox.monitor.open"),  # enter on a row too
    ]

    def load(self) -> Page:
        return self.client.checks(self.limit)

    def show(self, data: Page) -> None:
        self.set_rows(data.rows, data.more)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "drift_check":
            if not self.me.may("monitor check"):
                return False
            return True if self.is_mounted and self.table.selected() is not None else None  # no deployment selected
        return True

    def on_data_table_row_highlighted(self) -> None:
        self.rebind("drift_check")

    def on_data_table_row_selected(self) -> None:
        self.action_open_check()

    def action_open_check(self) -> None:
        """The selected check in full: each feature's severity and histogram, drift and quality over time."""
        from mlbox.tui.checkdetail import CheckDetail

        row = self.table.selected()
        if row is not None:
            self.app.push_screen(CheckDetail(int(row["id"]), str(row["variant"])))

    def action_drift_check(self) -> None:
        row = self.table.selected()
        if row is None:
            return
        name = str(row["deployment"])
        change = Change(
            title=f"Check drift of {name} now",
            diff=f"{name} drift history: + one check (the last 24h of its prediction log)",
            affects="reads the prediction log against each variant's training profile; nothing is served differently",
            command=f"mlbox monitor check {name}",
            audited=False,  # a read: `mlbox monitor check` writes a history row, no audit entry
        )
        self.app.push_screen(Confirm(change), lambda go: self._check(name, go))

    def _check(self, name: str, go: str | None) -> None:
        if go is None:
            return

        def work() -> str:
            return verdict_text(self.client.drift_check(name))

        self.act(work)  # in a worker: a check over a day of traffic never blocks the screen


def verdict_text(result: Row) -> str:
    """`churn_api: ! drift — primary churn:1 drift (500 rows), canary churn:2 ok (60 rows)`."""
    parts = [
        f"{variant} {v['model']} {'drift' if v['drifted'] else 'ok'} ({v['rows']:,} rows)"
        for variant, v in result["variants"].items()
    ]
    head = "! drift" if result["drifted"] else "✓ ok"
    return f"{result['deployment']}: {head} — " + (", ".join(parts) if parts else "no traffic in the window")
