"""The queue in meta.db: submit validation, claim with lease and devices, heartbeat, recover, cancel, retry."""

from __future__ import annotations

import json
import time

import pytest

from mlbox.errors import Conflict, NotFound, UsageError
from mlbox.jobs.placement import GpuState
from mlbox.jobs.queue import JobQueue

from ..conftest import OS_USER
from .conftest import JobBox

ADMIN = OS_USER
GPUS = [GpuState(0, 24_000, 24_000), GpuState(1, 80_000, 80_000)]


def cmd(q: JobQueue, **kw):  # type: ignore[no-untyped-def]
    return q.submit("command", {"argv": ["true"]}, ADMIN, **kw)


def audit_actions(jbox: JobBox) -> list[tuple[str, str]]:
    return [(r["action"], r["target"]) for r in jbox.box.db.query("SELECT action, target FROM audit ORDER BY rowid")]


def test_submit_records_a_queued_job_and_audits_it(jbox: JobBox) -> None:
    q = jbox.queue
    job = q.submit("command", {"argv": ["x"]}, ADMIN, project="vision", priority=3, gpus=1, gpu_memory_mb=8192,
                   cpus=2, memory_mb=4096, timeout_s=60, cpu_fallback=False, wait_gpu_s=30, max_attempts=2)  # fmt: skip
    assert (job.status, job.type, job.payload, job.project, job.priority) == ("queued", "command", {"argv": ["x"]}, "vision", 3)
    assert (job.gpus, job.gpu_memory_mb, job.cpus, job.memory_mb, job.timeout_s) == (1, 8192, 2.0, 4096, 60)
    assert (job.cpu_fallback, job.wait_gpu_s, job.attempts, job.max_attempts) == (False, 30, 0, 2)
    assert job.submitted_by == ADMIN and job.worker is None and job.devices is None and job.lease_until is None
    assert ("jobs.submit", f"job:{job.id}") in audit_actions(jbox)
    assert q.get(job.id) == job
    assert [j.id for j in q.list_jobs()] == [job.id]
    assert q.counts() == {"queued": 1}


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"type": "bogus"}, "unknown job type 'bogus'"),
        ({"gpus": -1}, "resources must be positive"),
        ({"gpu_memory_mb": -1}, "resources must be positive"),
        ({"memory_mb": -5}, "resources must be positive"),
        ({"cpus": 0}, "resources must be positive"),
        ({"cpus": -1.5}, "resources must be positive"),
        ({"timeout_s": 0}, "resources must be positive"),
        ({"max_attempts": 0}, "resources must be positive"),
        ({"project": "bad project!"}, "project name"),
    ],
)
def test_submit_validation(jbox: JobBox, kw: dict, message: str) -> None:  # type: ignore[type-arg]
    args = {"type": "command", "payload": {"argv": ["true"]}, "actor": ADMIN, **kw}
    with pytest.raises(UsageError) as err:
        jbox.queue.submit(**args)
    assert message in str(err.value)
    assert jbox.queue.list_jobs() == []


def test_get_unknown_job(jbox: JobBox) -> None:
    with pytest.raises(NotFound):
        jbox.queue.get(999)


def test_claim_marks_running_with_lease_and_devices(jbox: JobBox) -> None:
    q = jbox.queue
    gpu_job = cmd(q, gpus=1, gpu_memory_mb=40_000, priority=1)
    cpu_job = cmd(q)
    before = time.time()
    claimed = q.claim("w1", GPUS, slots=4, lease_s=30)
    after = time.time()
    got = {job.id: (job, p) for job, p in claimed}
    assert set(got) == {gpu_job.id, cpu_job.id}
    job, p = got[gpu_job.id]
    assert p.devices == (1,)  # 40 GB skips the 24 GB GPU
    assert job.status == "running" and job.worker == "w1" and job.devices == [1] and job.attempts == 1
    assert before + 30 <= job.lease_until <= after + 30
    assert before <= job.started_at <= after
    job, p = got[cpu_job.id]
    assert p.devices == () and job.devices == [] and job.status == "running"
    assert q.gpu_allocation() == {1: gpu_job.id}
    # nothing left to claim; a later claim does not take GPU 1 again
    later = cmd(q, gpus=1, gpu_memory_mb=40_000, cpu_fallback=False)
    assert q.claim("w2", GPUS, slots=4, lease_s=30) == []
    assert q.get(later.id).status == "queued"
    assert q.claim("w1", GPUS, slots=0, lease_s=30) == []


def test_claim_respects_quotas_from_the_database(jbox: JobBox) -> None:
    q = jbox.queue
    q.set_quota("vision", max_running=1, max_gpus=None, actor=ADMIN)
    a, b = cmd(q, project="vision"), cmd(q, project="vision")
    other = cmd(q, project="nlp")
    assert sorted(j.id for j, _ in q.claim("w1", [], slots=5, lease_s=30)) == [a.id, other.id]
    assert q.claim("w2", [], slots=5, lease_s=30) == []  # a's running job counts for every worker
    q.finish(a.id, "succeeded", 0, worker="w1")
    assert [j.id for j, _ in q.claim("w2", [], slots=5, lease_s=30)] == [b.id]
    q.set_quota("vision", max_running=None, max_gpus=0, actor=ADMIN)
    g = cmd(q, project="vision", gpus=1, cpu_fallback=False)
    assert q.claim("w1", GPUS, slots=5, lease_s=30) == []
    assert q.get(g.id).status == "queued"


def test_heartbeat_extends_only_this_workers_leases_and_reports_cancels(jbox: JobBox) -> None:
    q = jbox.queue
    a, b = cmd(q), cmd(q)
    q.claim("w1", [], slots=1, lease_s=5)
    q.claim("w2", [], slots=1, lease_s=5)
    mine = q.get(a.id) if q.get(a.id).worker == "w1" else q.get(b.id)
    theirs = q.get(b.id if mine.id == a.id else a.id)
    assert q.heartbeat("w1", [mine.id, theirs.id], lease_s=600)[0] == set()
    assert q.get(mine.id).lease_until >= time.time() + 590
    assert q.get(theirs.id).lease_until == theirs.lease_until  # not w1's job
    q.cancel(mine.id, ADMIN)
    assert q.heartbeat("w1", [mine.id], lease_s=600)[0] == {mine.id}
    assert q.heartbeat("w1", [], lease_s=600)[0] == set()


def test_recover_requeues_expired_leases_with_attempts_left_else_fails(jbox: JobBox) -> None:
    q = jbox.queue
    retried = cmd(q, max_attempts=2)
    last = cmd(q, max_attempts=1)
    fresh = cmd(q, max_attempts=2)
    q.claim("dead", [GpuState(0, 80_000, 80_000)], slots=2, lease_s=10)
    q.claim("alive", [], slots=1, lease_s=100)
    assert q.recover() == []  # nothing expired yet
    assert sorted(q.recover(now=time.time() + 30)) == [retried.id, last.id]
    r = q.get(retried.id)
    assert (r.status, r.worker, r.lease_until, r.devices, r.attempts) == ("queued", None, None, None, 1)
    f = q.get(last.id)
    assert f.status == "failed" and "lease expired" in (f.error or "") and f.ended_at is not None
    assert q.get(fresh.id).status == "running"
    assert q.gpu_allocation() == {}
    actions = audit_actions(jbox)
    assert ("jobs.recover", f"job:{retried.id}") in actions and ("jobs.recover", f"job:{last.id}") in actions
    # the requeued job runs again: attempt 2 of 2; when that worker dies too it fails
    again = q.claim("w3", [], slots=5, lease_s=10)
    assert [(j.id, j.attempts) for j, _ in again] == [(retried.id, 2)]
    assert q.recover(now=time.time() + 30) == [retried.id]  # "alive"'s 100 s lease has not expired
    assert q.get(retried.id).status == "failed"


def test_recover_does_not_requeue_a_job_whose_cancel_was_requested(jbox: JobBox) -> None:
    """Cancelled while running, then its worker died: the job must end cancelled, not run again."""
    q = jbox.queue
    job = cmd(q, max_attempts=3)
    q.claim("dead", [], slots=1, lease_s=10)
    q.cancel(job.id, ADMIN)
    q.recover(now=time.time() + 60)
    got = q.get(job.id)
    assert got.status == "cancelled", f"a job cancelled by its user was {got.status} after recovery"
    assert q.claim("w2", [], slots=1, lease_s=30) == []


def test_heartbeat_keeps_a_job_from_being_recovered(jbox: JobBox) -> None:
    q = jbox.queue
    job = cmd(q, max_attempts=3)
    q.claim("w1", [], slots=1, lease_s=1)
    q.heartbeat("w1", [job.id], lease_s=60)
    assert q.recover(now=time.time() + 30) == []
    assert q.get(job.id).status == "running"


def test_finish_and_release(jbox: JobBox) -> None:
    q = jbox.queue
    a, b, c = cmd(q), cmd(q, max_attempts=2), cmd(q)
    q.claim("w", [], slots=3, lease_s=30)
    q.finish(a.id, "failed", 3, "exited with 3", worker="w")
    got = q.get(a.id)
    assert (got.status, got.exit_code, got.error, got.lease_until) == ("failed", 3, "exited with 3", None)
    q.finish(a.id, "succeeded", 0, worker="w")  # only a running job finishes
    assert q.get(a.id).status == "failed"
    q.release(b.id, "its worker stopped", worker="w")
    assert q.get(b.id).status == "queued" and q.get(b.id).ended_at is None
    q.release(c.id, "its worker stopped", worker="w")
    assert q.get(c.id).status == "failed" and q.get(c.id).error == "its worker stopped"


def test_cancel_queued_and_running(jbox: JobBox) -> None:
    q = jbox.queue
    queued, running = cmd(q), cmd(q, priority=5)
    q.claim("w", [], slots=1, lease_s=30)
    assert q.get(running.id).status == "running"
    c = q.cancel(queued.id, ADMIN)
    assert c.status == "cancelled" and c.ended_at is not None
    r = q.cancel(running.id, ADMIN)
    assert r.status == "running" and r.cancel_requested
    with pytest.raises(Conflict):
        q.cancel(queued.id, ADMIN)
    actions = audit_actions(jbox)
    assert ("jobs.cancel", f"job:{queued.id}") in actions and ("jobs.cancel", f"job:{running.id}") in actions
    # a cancelled job is never claimed
    assert q.claim("w2", [], slots=5, lease_s=30) == []


def test_retry_resets_the_job(jbox: JobBox) -> None:
    q = jbox.queue
    job = cmd(q, gpus=1)
    q.claim("w", [GpuState(0, 80_000, 80_000)], slots=1, lease_s=30)
    q.started(job.id, 4242, "/tmp/x.log")
    q.finish(job.id, "failed", 1, "exited with 1", worker="w")
    other = cmd(q)
    with pytest.raises(Conflict):
        q.retry(other.id, ADMIN)  # a queued job is not retried
    q.cancel(other.id, ADMIN)
    r = q.retry(job.id, ADMIN)
    assert r.status == "queued" and r.attempts == 1 and r.max_attempts == 2
    assert (r.worker, r.lease_until, r.pid, r.devices, r.exit_code, r.error, r.cancel_requested) == (
        None, None, None, None, None, None, False,
    )  # fmt: skip
    assert r.submitted_at >= job.submitted_at
    assert ("jobs.retry", f"job:{job.id}") in audit_actions(jbox)
    claimed = q.claim("w", [GpuState(0, 80_000, 80_000)], slots=1, lease_s=30)
    assert [(j.id, j.attempts, j.devices) for j, _ in claimed] == [(job.id, 2, [0])]
    # a cancelled running job is retried with its cancel flag cleared
    q.cancel(job.id, ADMIN)
    q.finish(job.id, "cancelled", -15, "cancelled", worker="w")
    assert q.retry(job.id, ADMIN).cancel_requested is False


def test_retry_clears_the_previous_end_time(jbox: JobBox) -> None:
    """A queued job has not ended: release() clears ended_at when it requeues; retry() must too."""
    q = jbox.queue
    job = cmd(q)
    q.claim("w", [], slots=1, lease_s=30)
    q.finish(job.id, "failed", 1, "exited with 1", worker="w")
    r = q.retry(job.id, ADMIN)
    assert r.status == "queued"
    assert r.ended_at is None, "a retried (queued) job keeps the ended_at of its previous attempt"


def test_gpu_allocation_and_list_filters(jbox: JobBox) -> None:
    q = jbox.queue
    a = cmd(q, gpus=2, priority=2)
    b = cmd(q)
    q.claim("w", [GpuState(i, 80_000, 80_000) for i in range(3)], slots=1, lease_s=30)
    assert q.gpu_allocation() == {0: a.id, 1: a.id}
    assert [j.id for j in q.list_jobs("queued")] == [b.id]
    assert [j.id for j in q.list_jobs("running")] == [a.id]
    assert json.loads(json.dumps(q.get(a.id).as_dict()))["devices"] == [0, 1]
