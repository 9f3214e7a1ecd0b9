"""Audit: the newest entries of the tamper-evident log, filterable; `v` verifies the whole chain."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from mlbox.tui.client import Page, Verified
from mlbox.tui.screens.base import TableScreen


class AuditScreen(TableScreen):
    """Audit entries, newest first (verifying only reads the chain, so it is a lowercase key)."""

    TITLE = "audit"
    KEY = "seq"
    COLUMNS = ("seq", "ts", "actor", "action", "target", "details")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("v", "verify", "verify chain", id="mlbox.audit.verify"),
    ]

    def load(self) -> Page:
        return self.client.audit(self.limit)

    def show(self, data: Page) -> None:
        self.set_rows(data.rows, data.more)

    def action_verify(self) -> None:
        self.run_worker(self.client.verify_audit, thread=True, exclusive=True, group="verify", exit_on_error=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "verify" and event.state == WorkerState.SUCCESS:
            result = event.worker.result
            assert isinstance(result, Verified)
            self.verdict(result)
        elif event.worker.group == "verify" and event.state == WorkerState.ERROR:
            self.problem(event.worker.error)
        else:
            super().on_worker_state_changed(event)

    def verdict(self, result: Verified) -> None:
        if result.ok:
            text = f"✓ audit chain intact: {result.checked} entries verified"
        else:
            where = f" at entry {result.bad_seq}" if result.bad_seq is not None else ""
            text = f"✗ audit chain BROKEN{where}: {result.problem}"
        self.query_one("#title", Static).update(Text(" " + text))
        self.notify(text, severity="information" if result.ok else "error", timeout=10)
