"""Jobs: the queue with status, devices and owner; `l` follows the selected job's log, `X` cancels, `Y` retries it,
`T` submits training."""

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
        Binding("l", "open_log", "log", id="mlbox.jobs.log"),
        Binding("X", "cancel_job", "cancel job", id="mlbox.jobs.cancel"),
        Binding("Y", "retry_job", "retry job", id="mlbox.jobs.retry"),
        Binding("T", "submit_train", "submit training", id="mlbox.jobs.train"),
    ]
    ENDED: ClassVar[tuple[str, ...]] = ("failed", "cancelled", "timed_out")  # what `mlbox jobs retry` queues again

    def load(self) -> Page:
        return self.client.jobs(self.limit)

    def show(self, data: Page) -> None:
        self.set_rows(data.rows, data.more)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open_log":
            if not self.me.may("jobs logs"):
                return False
            return True if self.is_mounted and self.table.selected() is not None else None
        if action in ("cancel_job", "retry_job"):
            if not self.me.may("jobs cancel" if action == "cancel_job" else "jobs retry"):
                return False
            row = self.table.selected() if self.is_mounted else None
            if row is None:
                return None
            if action == "cancel_job" and (row["status"] not in ("queued", "running") or row["stopping"]):
                return None  # nothing to cancel here
            if action == "retry_job" and row["status"] not in self.ENDED:
                return None  # queued, running or succeeded: nothing to retry
            mine = row["user"] == self.me.name or allowed(self.me.role, "box.admin")
            return True if mine else None  # someone else's job: only an admin may cancel or retry it
        if action == "submit_train":
            # `mlbox jobs submit train` needs jobs.submit, then train.run for the job's type
            return self.me.may("jobs submit") and allowed(self.me.role, "train.run")
        return True

    def on_data_table_row_highlighted(self) -> None:
        self.rebind("open_log")
        self.rebind("cancel_job")
        self.rebind("retry_job")

    def action_open_log(self) -> None:
        from mlbox.tui.logview import LogScreen

        row = self.table.selected()
        if row is not None:
            self.app.push_screen(LogScreen(int(row["id"])))

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

    def action_retry_job(self) -> None:
        row = self.table.selected()
        if row is None:
            return
        job_id = int(row["id"])
        change = Change(
            title=f"Retry job {job_id}",
            diff=f"{row['status']} → queued  (attempt {int(row['attempts']) + 1})",
            affects=f"{row['type']} job of {row['user']} (project {row['project']}); the same job and spec, run again",
            command=f"mlbox jobs retry {job_id}",
        )
        self.app.push_screen(Confirm(change), lambda reason: self._retry(job_id, reason))

    def _retry(self, job_id: int, reason: str | None) -> None:
        if reason is None:
            return

        def work() -> str:
            job = self.client.retry_job(job_id, reason)
            return f"job {job['id']}: queued again"

        self.act(work)

    def action_submit_train(self) -> None:
        spec = self.client.train_spec()  # a path from the settings: nothing is read until Apply
        change = Change(
            title="Submit a training job",
            diff="jobs queue: + train job (queued)",
            affects=f"spec {spec}; runs on a worker (`mlbox worker`), tracked as a run, not registered",
            command=f"mlbox jobs submit train {spec}",
        )
        self.app.push_screen(Confirm(change), lambda reason: self._submit(spec, reason))

    def _submit(self, spec: str, reason: str | None) -> None:
        if reason is None:
            return

        def work() -> str:
            job = self.client.submit_train(spec, reason)
            return f"job {job['id']}: train queued"

        self.act(work)
