"""Jobs: the queue with status, devices and owner; `X` cancels the selected job."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType

from mlbox.security.roles import allowed
from mlbox.tui.client import Page
from mlbox.tui.confirm import Change, Confirm
from mlbox.tui.screens.base import TableScreen


class JobsScreen(TableScreen):
    """The job queue, newest first."""

    TITLE = "jobs"
    COLUMNS = ("id", "type", "status", "user", "project", "priority", "gpus", "devices", "attempts", "submitted", "error")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("X", "cancel_job", "cancel job", id="mlbox.jobs.cancel"),
    ]

    def load(self) -> Page:
        return self.client.jobs(self.limit)

    def show(self, data: Page) -> None:
        self.set_rows(data.rows, data.more)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_job":
            if not self.me.may("jobs cancel"):
                return False
            row = self.table.selected() if self.is_mounted else None
            if row is None or row["status"] not in ("queued", "running") or row["stopping"]:
                return None  # nothing to cancel here
            mine = row["user"] == self.me.name or allowed(self.me.role, "box.admin")
            return True if mine else None  # someone else's job: only an admin may cancel it
        return True

    def on_data_table_row_highlighted(self) -> None:
        self.rebind("cancel_job")

    def action_cancel_job(self) -> None:
        row = self.table.selected()
        if row is None:
            return
        job_id = int(row["id"])
        change = Change(
            title=f"Cancel job {job_id}",
            diff=f"{row['status']} → {'cancelled' if row['status'] == 'queued' else 'stopping'}",
            affects=f"{row['type']} job of {row['user']} (project {row['project']})"
            + ("; its worker stops the process and its children" if row["status"] == "running" else ""),
            command=f"mlbox jobs cancel {job_id}",
        )
        self.app.push_screen(Confirm(change), lambda reason: self._apply(job_id, reason))

    def _apply(self, job_id: int, reason: str | None) -> None:
        if reason is None:
            return

        def work() -> str:
            job = self.client.cancel_job(job_id, reason)
            return f"job {job['id']}: {'cancelled' if job['status'] == 'cancelled' else 'stopping'}"

        self.act(work)
