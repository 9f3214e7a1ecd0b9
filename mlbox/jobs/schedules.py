"""The job queue's schedules in meta.db (`job_schedules`): a job type that `mlbox worker` queues again every so often.

`mlbox jobs submit retention --every 1d` queues a job now and stores a schedule due one period
later. Each worker tick (`loop.schedule_due`) claims every due schedule by a compare-and-set on
`next_run` (so of several workers exactly one queues each slot) and submits its job as the user
who set the schedule. Setting and removing a schedule are audited (`jobs.schedule`,
`jobs.unschedule`); each job it queues is audited as any submit (`jobs.submit`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlbox import clock
from mlbox.errors import NotFound, UsageError
from mlbox.jobs.queue import JobQueue

SCHEDULABLE = ("retention",)  # job types a schedule may queue: ones that need no per-run arguments


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """One stored schedule: the job type and payload it queues, its period, and when it is next due."""

    name: str
    type: str
    payload: dict[str, Any]
    every_s: int
    next_run: float
    created_at: str
    created_by: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "next_run_at": clock.iso(datetime.fromtimestamp(self.next_run, UTC))}


def _schedule(row: Mapping[str, Any]) -> Schedule:
    return Schedule(**{**row, "payload": json.loads(row["payload"])})


class Schedules:
    """Set, list, remove and fire the queue's schedules."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.db = queue.db

    def set(self, type: str, payload: Mapping[str, Any], every_s: int, actor: str, *, now: float | None = None) -> Schedule:
        """Store (or replace) the schedule named after `type`, first due `every_s` after `now`."""
        if type not in SCHEDULABLE:
            raise UsageError(f"{type} jobs cannot be scheduled", hint=f"--every applies to {', '.join(SCHEDULABLE)} jobs")
        if every_s <= 0:
            raise UsageError("a schedule's period must be positive")
        start = time.time() if now is None else now
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO job_schedules (name, type, payload, every_s, next_run, created_at, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET payload = excluded.payload, "
                "every_s = excluded.every_s, next_run = excluded.next_run, created_at = excluded.created_at, "
                "created_by = excluded.created_by",
                (type, type, json.dumps(dict(payload)), every_s, start + every_s, clock.iso(), actor),
            )
            self.queue.audit.record(actor, "jobs.schedule", type, {"type": type, "every_s": every_s})
        return self.get(type)

    def get(self, name: str) -> Schedule:
        row = self.db.one("SELECT * FROM job_schedules WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no schedule {name!r}", hint="`mlbox jobs schedules` lists them")
        return _schedule(row)

    def all(self) -> list[Schedule]:
        return [_schedule(r) for r in self.db.query("SELECT * FROM job_schedules ORDER BY name")]

    def remove(self, name: str, actor: str) -> None:
        with self.db.atomic():
            if not self.db.execute("DELETE FROM job_schedules WHERE name = ?", (name,)).rowcount:
                raise NotFound(f"no schedule {name!r}", hint="`mlbox jobs schedules` lists them")
            self.queue.audit.record(actor, "jobs.unschedule", name, {})

    def run_due(self, now: float | None = None) -> list[int]:
        """Queue the job of every schedule due at `now` that this caller wins; the new job ids.

        A schedule missed for several periods (no worker ran) fires once and is next due one period
        after `now`, never in a burst.
        """
        now = time.time() if now is None else now
        submitted = []
        for s in self.all():
            if s.next_run > now:
                continue
            with self.db.atomic():
                won = self.db.execute(
                    "UPDATE job_schedules SET next_run = ? WHERE name = ? AND next_run = ?", (now + s.every_s, s.name, s.next_run)
                ).rowcount
                if won == 1:
                    submitted.append(self.queue.submit(s.type, {**s.payload, "schedule": s.name}, s.created_by).id)
        return submitted
