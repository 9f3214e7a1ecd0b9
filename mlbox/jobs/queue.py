"""The job queue in meta.db: submit, claim with a lease, heartbeat, finish, cancel, retry, recover.

Claiming happens in one write transaction that reads the queue and the GPUs held by
running jobs, runs the pure placement, and marks the chosen jobs running with this
worker's lease, so two workers never start the same job or share a GPU. A job whose
worker stopped heartbeating (kill -9) goes back to the queue when its lease expires, or
fails once its attempts are used up.

Audited in the transaction that changes the job: submit, quota, cancel, retry (by the user),
and on the worker side each attempt's start (`jobs.start`), end (`jobs.finish`: status, exit
code, runtime), hand-back (`jobs.release`) and recovery (`jobs.recover`), by the worker's actor
(the box user who runs `mlbox worker`). Lease heartbeats are bookkeeping and not audited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlbox.errors import Conflict, NotFound, PermissionDenied, UsageError
from mlbox.jobs.placement import GpuState, Placement, QueuedJob, Quota, Snapshot, Usage, place
from mlbox.security.roles import allowed
from mlbox.store.audit import AuditLog
from mlbox.store.sqlite import Database
from mlbox.types import NAME_PATTERN, Actor, check_name

TYPES = ("train", "materialize", "monitor", "retention", "command", "predict")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled", "timed_out")
WORKER_ACTOR = "mlbox-worker"  # the actor of worker-side entries when no box user is named


@dataclass(frozen=True)
class Job:
    """One queued job row: type, payload, resources, status, attempts and lease."""
    id: int
    type: str
    payload: dict[str, Any]
    project: str
    priority: int
    gpus: int
    gpu_memory_mb: int
    cpus: float
    memory_mb: int
    timeout_s: int
    cpu_fallback: bool
    wait_gpu_s: int
    status: str
    attempts: int
    max_attempts: int
    submitted_at: float
    submitted_by: str
    started_at: float | None
    ended_at: float | None
    worker: str | None
    lease_until: float | None
    pid: int | None
    devices: list[int] | None
    exit_code: int | None
    error: str | None
    log_path: str | None
    cancel_requested: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _job(row: Mapping[str, Any]) -> Job:
    r = dict(row)
    r["payload"] = json.loads(r["payload"])
    r["devices"] = None if r["devices"] is None else json.loads(r["devices"])
    r["cpu_fallback"] = bool(r["cpu_fallback"])
    r["cancel_requested"] = bool(r["cancel_requested"])
    return Job(**r)


class JobQueue:
    """The job queue in meta.db: submit, lease, heartbeat, finish, cancel, retry and recover jobs, audited."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    def submit(
        self,
        type: str,
        payload: Mapping[str, Any],
        actor: str,
        *,
        project: str = "default",
        priority: int = 0,
        gpus: int = 0,
        gpu_memory_mb: int = 0,
        cpus: float = 1.0,
        memory_mb: int = 0,
        timeout_s: int = 3600,
        cpu_fallback: bool = True,
        wait_gpu_s: int = 600,
        max_attempts: int = 1,
    ) -> Job:
        if type not in TYPES:
            raise UsageError(f"unknown job type {type!r}", hint=f"types are {', '.join(TYPES)}")
        check_name(project.replace("-", "_"), "project name", NAME_PATTERN)
        if gpus < 0 or gpu_memory_mb < 0 or cpus <= 0 or memory_mb < 0 or timeout_s <= 0 or max_attempts < 1:
            raise UsageError("resources must be positive: gpus, gpu_memory, memory >= 0; cpus, timeout, attempts > 0")
        with self.db.atomic():
            job_id = self.db.execute(
                "INSERT INTO jobs (type, payload, project, priority, gpus, gpu_memory_mb, cpus, memory_mb, timeout_s, "
                "cpu_fallback, wait_gpu_s, status, max_attempts, submitted_at, submitted_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                (type, json.dumps(dict(payload)), project, priority, gpus, gpu_memory_mb, cpus, memory_mb, timeout_s,
                 int(cpu_fallback), wait_gpu_s, max_attempts, time.time(), actor),
            ).lastrowid  # fmt: skip
            self.audit.record(actor, "jobs.submit", f"job:{job_id}", {"type": type, "project": project, "gpus": gpus})
        return self.get(int(job_id or 0))

    def get(self, job_id: int) -> Job:
        row = self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound(f"no job {job_id}", hint="`mlbox jobs list` shows jobs")
        return _job(row)

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[Job]:
        sql = "SELECT * FROM jobs" + (" WHERE status = ?" if status else "") + " ORDER BY id DESC LIMIT ?"
        return [_job(r) for r in self.db.query(sql, (status, limit) if status else (limit,))]

    def counts(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self.db.query("SELECT status, count(*) AS n FROM jobs GROUP BY status")}

    def gpu_allocation(self) -> dict[int, int]:
        """GPU index → running job id."""
        out = {}
        for r in self.db.query("SELECT id, devices FROM jobs WHERE status = 'running' AND devices IS NOT NULL"):
            for index in json.loads(r["devices"]):
                out[int(index)] = int(r["id"])
        return out

    def set_quota(self, project: str, max_running: int | None, max_gpus: int | None, actor: str) -> None:
        check_name(project.replace("-", "_"), "project name", NAME_PATTERN)  # as submit checks it
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO job_quotas (project, max_running, max_gpus) VALUES (?, ?, ?) ON CONFLICT(project) DO UPDATE "
                "SET max_running = excluded.max_running, max_gpus = excluded.max_gpus",
                (project, max_running, max_gpus),
            )
            self.audit.record(actor, "jobs.quota", project, {"max_running": max_running, "max_gpus": max_gpus})

    @staticmethod
    def check_owner(job: Job, who: Actor, verb: str) -> None:
        """Users act on their own jobs; `box.admin` on anyone's. PermissionDenied otherwise."""
        if who.name != job.submitted_by and not allowed(who.role, "box.admin"):
            raise PermissionDenied(
                f"{who.name} ({who.role}) may not {verb} job {job.id}: it was submitted by {job.submitted_by}",
                hint="users cancel and retry their own jobs; an admin (box.admin) any",
            )

    def cancel(self, job_id: int, actor: str, *, owner: Actor | None = None) -> Job:
        """Cancel a queued job or ask its worker to stop a running one; with `owner`, only if that user may."""
        with self.db.atomic():
            job = self.get(job_id)
            if owner is not None:
                self.check_owner(job, owner, "cancel")
            if job.status == "queued":
                self.db.execute("UPDATE jobs SET status = 'cancelled', ended_at = ? WHERE id = ?", (time.time(), job_id))
            elif job.status == "running":
                self.db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise Conflict(f"job {job_id} already ended ({job.status})")
            self.audit.record(actor, "jobs.cancel", f"job:{job_id}", {"was": job.status})
        return self.get(job_id)

    def retry(self, job_id: int, actor: str, *, owner: Actor | None = None) -> Job:
        """Queue an ended job again; with `owner`, only if that user may (see `check_owner`)."""
        with self.db.atomic():
            job = self.get(job_id)
            if owner is not None:
                self.check_owner(job, owner, "retry")
            if job.status not in ("failed", "cancelled", "timed_out"):
                raise Conflict(f"job {job_id} is {job.status}; only failed, cancelled or timed-out jobs are retried")
            self.db.execute(
                "UPDATE jobs SET status = 'queued', cancel_requested = 0, max_attempts = attempts + 1, worker = NULL, "
                "lease_until = NULL, pid = NULL, devices = NULL, exit_code = NULL, error = NULL, ended_at = NULL, "
                "submitted_at = ? WHERE id = ?",
                (time.time(), job_id),
            )
            self.audit.record(actor, "jobs.retry", f"job:{job_id}", {"was": job.status})
        return self.get(job_id)

    # worker side ------------------------------------------------------------
    def claim(
        self,
        worker: str,
        gpus: Sequence[GpuState],
        slots: int,
        lease_s: float,
        aging_per_minute: float = 1.0,
        *,
        actor: str = WORKER_ACTOR,
    ) -> list[tuple[Job, Placement]]:
        """Place and claim queued jobs for `worker` in one transaction."""
        if slots <= 0:
            return []
        now = time.time()
        with self.db.atomic():
            held = self.gpu_allocation()
            states = [GpuState(g.index, g.memory_total_mb, g.memory_free_mb, g.index in held) for g in gpus]
            queued = [
                QueuedJob(r["id"], r["project"], r["priority"], r["submitted_at"], r["gpus"], r["gpu_memory_mb"],
                          bool(r["cpu_fallback"]), float(r["wait_gpu_s"]))  # fmt: skip
                for r in self.db.query("SELECT * FROM jobs WHERE status = 'queued'")
            ]
            usage = {
                r["project"]: Usage(r["n"], r["g"] or 0)
                for r in self.db.query(
                    "SELECT project, count(*) AS n, sum(json_array_length(coalesce(devices, '[]'))) AS g FROM jobs "
                    "WHERE status = 'running' GROUP BY project"
                )
            }
            quotas = {r["project"]: Quota(r["max_running"], r["max_gpus"]) for r in self.db.query("SELECT * FROM job_quotas")}
            plan = place(Snapshot(queued, states, slots, usage, quotas, now, aging_per_minute))
            claimed = []
            for p in plan:
                changed = self.db.execute(
                    "UPDATE jobs SET status = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, "
                    "started_at = ?, devices = ? WHERE id = ? AND status = 'queued'",
                    (worker, now + lease_s, now, json.dumps(list(p.devices)), p.job_id),
                ).rowcount
                if changed == 1:
                    job = self.get(p.job_id)
                    claimed.append((job, p))
                    self.audit.record(actor, "jobs.start", f"job:{job.id}", {
                        "type": job.type, "attempt": job.attempts, "worker": worker, "devices": list(p.devices),
                        "submitted_by": job.submitted_by,
                    })  # fmt: skip
            return claimed

    def started(self, job_id: int, pid: int, log_path: str) -> None:
        with self.db.atomic():
            self.db.execute("UPDATE jobs SET pid = ?, log_path = ? WHERE id = ?", (pid, log_path, job_id))

    def heartbeat(self, worker: str, job_ids: Sequence[int], lease_s: float) -> tuple[set[int], set[int]]:
        """Extend `worker`'s leases on `job_ids`; returns (cancel requested, no longer this worker's)."""
        if not job_ids:
            return set(), set()
        marks = ",".join("?" * len(job_ids))
        with self.db.atomic():
            self.db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE worker = ? AND status = 'running' AND id IN ({marks})",
                (time.time() + lease_s, worker, *job_ids),
            )
            rows = self.db.query(f"SELECT id, worker, status, cancel_requested FROM jobs WHERE id IN ({marks})", list(job_ids))
        cancel = {int(r["id"]) for r in rows if r["cancel_requested"] and r["worker"] == worker}
        lost = {int(r["id"]) for r in rows if r["worker"] != worker or r["status"] != "running"}
        return cancel - lost, lost

    def finish(
        self, job_id: int, status: str, exit_code: int | None, error: str | None = None, *, worker: str, actor: str = WORKER_ACTOR
    ) -> None:
        """Record the end of `worker`'s attempt; a worker that lost the job (lease recovered) changes nothing."""
        assert status in FINAL
        now = time.time()
        with self.db.atomic():
            changed = self.db.execute(
                "UPDATE jobs SET status = ?, exit_code = ?, error = ?, ended_at = ?, lease_until = NULL "
                "WHERE id = ? AND status = 'running' AND worker = ?",
                (status, exit_code, error, now, job_id, worker),
            ).rowcount
            if changed == 1:
                job = self.get(job_id)
                runtime = None if job.started_at is None else round(now - job.started_at, 3)
                self.audit.record(actor, "jobs.finish", f"job:{job_id}", {
                    "type": job.type, "status": status, "exit_code": exit_code, "runtime_s": runtime,
                    "attempt": job.attempts, "worker": worker,
                })  # fmt: skip

    def release(self, job_id: int, why: str, *, worker: str, actor: str = WORKER_ACTOR) -> None:
        """A job its worker gave up (worker stopping): queued again if it has attempts left, else failed."""
        with self.db.atomic():
            changed = self.db.execute(
                "UPDATE jobs SET status = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'failed' END, "
                "error = CASE WHEN attempts < max_attempts THEN NULL ELSE ? END, worker = NULL, lease_until = NULL, "
                "pid = NULL, devices = NULL, ended_at = CASE WHEN attempts < max_attempts THEN NULL ELSE ? END "
                "WHERE id = ? AND status = 'running' AND worker = ?",
                (why, time.time(), job_id, worker),
            ).rowcount
            if changed == 1:
                status = self.get(job_id).status
                self.audit.record(actor, "jobs.release", f"job:{job_id}", {"status": status, "why": why, "worker": worker})

    def recover(self, now: float | None = None, *, actor: str = WORKER_ACTOR) -> list[int]:
        """Jobs whose lease expired (their worker died): back to the queue, or failed after their attempts."""
        now = time.time() if now is None else now
        with self.db.atomic():
            rows = self.db.query(
                "SELECT id, attempts, max_attempts, cancel_requested FROM jobs WHERE status = 'running' AND lease_until < ?", (now,)
            )
            for r in rows:
                if r["cancel_requested"]:
                    self.db.execute(
                        "UPDATE jobs SET status = 'cancelled', ended_at = ?, lease_until = NULL WHERE id = ?", (now, r["id"])
                    )
                elif r["attempts"] < r["max_attempts"]:
                    self.db.execute(
                        "UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL, pid = NULL, devices = NULL WHERE id = ?",
                        (r["id"],),
                    )
                else:
                    self.db.execute(
                        "UPDATE jobs SET status = 'failed', error = 'its worker stopped (lease expired)', ended_at = ?, "
                        "lease_until = NULL WHERE id = ?",
                        (now, r["id"]),
                    )
                self.audit.record(actor, "jobs.recover", f"job:{r['id']}", {"requeued": r["attempts"] < r["max_attempts"]})
        return [int(r["id"]) for r in rows]
