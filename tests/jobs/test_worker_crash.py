"""A worker killed with -9 mid-job: its job dies with it and is recovered by the next worker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .conftest import JobBox, pid_alive, wait_for


def sleeper(tmp: Path) -> str:
    """A command that records its pid; the first attempt sleeps a minute, later ones exit at once."""
    marker, pids = tmp / "first-attempt", tmp / "pids"
    return (
        "import os, sys, time\n"
        f"open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        f"if os.path.exists({str(marker)!r}):\n    print('second attempt'); sys.exit(0)\n"
        f"open({str(marker)!r}, 'w').close(); print('first attempt', flush=True); time.sleep(60)\n"
    )


def command_pids(tmp: Path) -> list[int]:
    path = tmp / "pids"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def start_and_kill(jbox: JobBox, job_id: int):  # type: ignore[no-untyped-def]
    """Start a worker, wait until the job's command runs, kill -9 the worker's process group."""
    worker = jbox.start_worker("--gpus", "none")
    jbox.wait_status(job_id, "running", timeout=20)
    wait_for(lambda: command_pids(jbox.tmp), 20, "the job's command to start")
    job = jbox.job(job_id)
    command_pid = command_pids(jbox.tmp)[0]
    jbox.procs.extra_pids.append(command_pid)  # killed at teardown should it outlive its worker
    assert pid_alive(job.pid) and pid_alive(command_pid)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    return job, command_pid


def test_kill_9_worker_job_dies_and_is_recovered_on_a_new_worker(jbox: JobBox) -> None:
    job_id = jbox.submit_command(sleeper(jbox.tmp), "--retries", "1")
    job, _ = start_and_kill(jbox, job_id)
    assert job.attempts == 1 and job.max_attempts == 2
    # the job process (`mlbox jobs exec`, in its own session) dies with its worker: PR_SET_PDEATHSIG
    wait_for(lambda: not pid_alive(job.pid), 5, f"job process {job.pid} to die with its worker")

    # its lease (30 s) has not expired: a new worker leaves it alone
    jbox.worker_once("--gpus", "none")
    assert jbox.job(job_id).status == "running"
    # time passes: the lease expires and the job goes back to the queue
    assert jbox.queue.recover(now=time.time() + 60) == [job_id]
    requeued = jbox.job(job_id)
    assert (requeued.status, requeued.attempts, requeued.worker, requeued.pid) == ("queued", 1, None, None)

    jbox.worker_once("--gpus", "none")
    done = jbox.job(job_id)
    assert (done.status, done.attempts, done.exit_code) == ("succeeded", 2, 0), jbox.log(job_id)
    assert done.worker != job.worker
    log = jbox.log(job_id)
    assert f"--- job {job_id} attempt 1" in log and f"--- job {job_id} attempt 2" in log
    assert "first attempt" in log and "second attempt" in log
    assert len(command_pids(jbox.tmp)) == 2


def test_kill_9_worker_without_retries_fails_the_job(jbox: JobBox) -> None:
    job_id = jbox.submit_command(sleeper(jbox.tmp))
    job, _ = start_and_kill(jbox, job_id)
    wait_for(lambda: not pid_alive(job.pid), 5, "the job process to die with its worker")
    assert jbox.queue.recover(now=time.time() + 60) == [job_id]
    failed = jbox.job(job_id)
    assert failed.status == "failed" and "lease expired" in (failed.error or "")
    assert jbox.mlbox("worker", "--once", "--gpus", "none").returncode == 0
    assert jbox.job(job_id).status == "failed" and jbox.job(job_id).attempts == 1


def test_kill_9_worker_also_kills_the_jobs_command(jbox: JobBox) -> None:
    """The command a `command` job runs is the job: it must not outlive its worker either, or the
    recovered job runs twice at once."""
    job_id = jbox.submit_command(sleeper(jbox.tmp), "--retries", "1")
    job, command_pid = start_and_kill(jbox, job_id)
    wait_for(lambda: not pid_alive(job.pid), 5, "the job process to die with its worker")
    time.sleep(1)
    assert not pid_alive(command_pid), (
        f"job {job_id}'s command (pid {command_pid}) still runs after its worker and `mlbox jobs exec` died"
    )


def test_sigterm_worker_hands_its_jobs_back(jbox: JobBox) -> None:
    job_id = jbox.submit_command(sleeper(jbox.tmp), "--retries", "1")
    worker = jbox.start_worker("--gpus", "none")
    jbox.wait_status(job_id, "running", timeout=20)
    wait_for(lambda: command_pids(jbox.tmp), 20, "the job's command to start")
    job, command_pid = jbox.job(job_id), command_pids(jbox.tmp)[0]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    back = jbox.job(job_id)
    assert (back.status, back.attempts, back.worker, back.devices) == ("queued", 1, None, None)
    assert not pid_alive(job.pid) and not pid_alive(command_pid)
