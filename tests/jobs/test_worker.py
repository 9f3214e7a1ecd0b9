"""A real `mlbox worker` running real jobs: train, command output and exit codes, timeout, cancel, devices."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.hardware import Gpu, Inventory
from mlbox.jobs.worker import Worker, parse_gpus
from mlbox.project import init_project

from ..conftest import OS_USER, write_fake_nvidia_smi
from .conftest import JobBox, Procs, group_alive, pid_alive, py, wait_for

FAST = {"n_estimators": 10, "max_depth": 3, "learning_rate": 0.3}
TWO_GPUS = "0, NVIDIA L4, 24000, 0, 0, GPU-small\n1, NVIDIA A100 80GB, 81000, 0, 0, GPU-big"
ENV_PROBE = (
    "import json, os; print('ENV ' + json.dumps({k: os.environ.get(k) for k in "
    "('CUDA_VISIBLE_DEVICES', 'CUDA_DEVICE_ORDER', 'MLBOX_TOKEN', 'MLBOX_HOME', 'OMP_NUM_THREADS')} | {'cwd': os.getcwd()}))"
)


def env_of(log: str) -> dict:  # type: ignore[type-arg]
    line = next(line for line in log.splitlines() if line.startswith("ENV "))
    return json.loads(line[4:])


@pytest.fixture
def project(tmp_path: Path, procs: Procs):  # type: ignore[no-untyped-def]
    """`mlbox init` from the tabular-classification template, features applied and ingested."""
    home = tmp_path / "churn"
    init_project(home, "tabular-classification")
    box = Box.create(load_settings(home, environ={}), OS_USER)
    box.actor = OS_USER
    fs = box.features
    fs.apply(fs.load(), OS_USER)
    for view in fs.catalog.latest_views():
        fs.ingest(view.name, actor=OS_USER)
    work = tmp_path / "work"
    work.mkdir()
    try:
        yield JobBox(home, box, procs, work)
    finally:
        box.close()


def test_worker_runs_real_train_jobs_to_success(project: JobBox) -> None:
    raw = yaml.safe_load((project.home / "train.yaml").read_text())
    raw["params"] = FAST
    (project.home / "fast.yaml").write_text(yaml.safe_dump(raw))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] + x[:, 1] > 0).astype(int)}).to_csv(
        project.tmp / "plain.csv", index=False
    )
    (project.tmp / "plain.yaml").write_text(yaml.safe_dump({
        "experiment": "plain", "task": "classification", "data": {"path": "plain.csv"}, "target": "y",
        "flavor": "xgboost", "params": FAST, "split": {"method": "random", "test_size": 0.2},
    }))  # fmt: skip
    store_job = project.submit("train", str(project.home / "fast.yaml"), "--register")
    plain_job = project.submit("train", "plain.yaml")  # relative to the submitter's folder
    assert project.job(plain_job).payload == {"spec": str(project.tmp / "plain.yaml"), "register": False}

    project.worker_once("--slots", "2", "--gpus", "none", timeout=120)

    store, plain = project.job(store_job), project.job(plain_job)
    assert (store.status, store.exit_code, store.attempts, store.devices) == ("succeeded", 0, 1, []), project.log(store_job)
    assert (plain.status, plain.exit_code) == ("succeeded", 0), project.log(plain_job)
    churn_runs = project.box.tracking.runs("churn")
    assert len(churn_runs) == 1 and churn_runs[0].status == "finished" and churn_runs[0].user == OS_USER
    versions = project.box.registry.versions("churn")
    assert [v.version for v in versions] == [1] and versions[0].run_id == churn_runs[0].id
    assert "registered churn" in project.log(store_job)
    assert len(project.box.tracking.runs("plain")) == 1
    assert project.box.registry.versions("plain") == []
    for job_id in (store_job, plain_job):
        assert (project.home / "jobs" / str(job_id)).is_dir()
        assert project.job(job_id).log_path == str(project.home / "logs" / "jobs" / f"{job_id}.log")


def test_command_jobs_log_output_exit_codes_and_cpu_env(jbox: JobBox) -> None:
    token = jbox.box.identity.create_token(OS_USER, OS_USER)[1]
    probe = jbox.submit_command(ENV_PROBE + "; print('hello from the job')", "--cpus", "2")
    failing = jbox.submit_command("import sys; print('about to fail'); sys.exit(3)")
    q = jbox.queue  # --memory: an address-space limit
    too_big = q.submit("command", {"argv": py("b = bytearray(2 * 1024**3)")}, OS_USER, memory_mb=1024).id
    fits = q.submit("command", {"argv": py("b = bytearray(100 * 1024**2); print('fits')")}, OS_USER, memory_mb=1024).id
    # the worker acts with an admin token; its jobs must not inherit it
    r = jbox.mlbox("worker", "--once", "--slots", "4", MLBOX_TOKEN=token, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout

    ok = jbox.job(probe)
    assert (ok.status, ok.exit_code, ok.error, ok.devices) == ("succeeded", 0, None, [])
    log = jbox.log(probe)
    assert "hello from the job" in log and f"--- job {probe} attempt 1" in log
    env = env_of(log)
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # CPU job: no GPU visible
    assert env["MLBOX_TOKEN"] is None
    assert env["MLBOX_HOME"] == str(jbox.home)
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["cwd"] == str(jbox.home / "jobs" / str(probe))

    bad = jbox.job(failing)
    assert (bad.status, bad.exit_code) == ("failed", 3) and "3" in (bad.error or "")
    assert "about to fail" in jbox.log(failing)

    assert jbox.job(too_big).status == "failed" and "MemoryError" in jbox.log(too_big)
    assert jbox.job(fits).status == "succeeded" and "fits" in jbox.log(fits)

    # `mlbox jobs logs ID` prints the log
    r = jbox.mlbox("jobs", "logs", str(probe))
    assert r.returncode == 0 and "hello from the job" in r.stdout
    r = jbox.mlbox("jobs", "logs", "-f", str(failing))  # ended: -f returns at once
    assert r.returncode == 0 and "about to fail" in r.stdout


def test_timeout_stops_the_job_within_seconds(jbox: JobBox) -> None:
    pidfile = jbox.tmp / "pid"
    job_id = jbox.submit_command(
        f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(30)", "--timeout", "2s"
    )
    started = time.monotonic()
    jbox.worker_once(timeout=40)
    elapsed = time.monotonic() - started
    job = jbox.job(job_id)
    assert job.status == "timed_out", jbox.log(job_id)
    assert "timeout" in (job.error or "")
    assert elapsed < 12, f"a 2 s timeout took {elapsed:.1f}s"
    assert not pid_alive(int(pidfile.read_text()))  # the command itself, not only `mlbox jobs exec`
    assert not group_alive(job.pid)


def test_timeout_stops_a_command_that_ignores_sigterm(jbox: JobBox) -> None:
    """"Cancel and timeout stop the whole process group": also a member that ignores SIGTERM once
    `mlbox jobs exec` (the group leader) has gone."""
    pidfile = jbox.tmp / "pid"
    job_id = jbox.queue.submit("command", {"argv": py(
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )}, OS_USER, timeout_s=2).id  # fmt: skip
    jbox.worker_once(timeout=40)
    assert jbox.job(job_id).status == "timed_out"
    command_pid = int(pidfile.read_text())
    jbox.procs.extra_pids.append(command_pid)
    assert not pid_alive(command_pid), f"job {job_id}'s command (pid {command_pid}) survived its timeout"


def test_cancel_of_a_running_job_stops_its_process_group(jbox: JobBox) -> None:
    pidfile = jbox.tmp / "pid"
    job_id = jbox.submit_command(f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    worker = jbox.start_worker("--gpus", "none")
    job = jbox.wait_status(job_id, "running", timeout=20)
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), 20, "the command to start")
    command_pid = int(pidfile.read_text())
    job = jbox.job(job_id)
    assert job.pid and pid_alive(job.pid) and pid_alive(command_pid)
    assert os.getpgid(command_pid) == job.pid  # the job's own process group
    assert job.pid != worker.pid and os.getpgid(job.pid) != os.getpgid(worker.pid)

    r = jbox.mlbox("--json", "jobs", "cancel", str(job_id))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cancel_requested"] is True
    t0 = time.monotonic()
    job = jbox.wait_status(job_id, "cancelled", timeout=15)
    assert time.monotonic() - t0 < 10
    assert job.error == "cancelled"
    wait_for(lambda: not group_alive(job.pid), 5, "the job's process group to be gone")
    assert not pid_alive(command_pid)
    # the worker keeps going, and stops cleanly on SIGTERM
    assert worker.poll() is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0


def test_gpu_jobs_get_the_right_devices_from_nvidia_smi(jbox: JobBox, bin_dir: Path) -> None:
    write_fake_nvidia_smi(bin_dir, TWO_GPUS)
    big = jbox.submit_command(ENV_PROBE, "--gpus", "1", "--gpu-memory", "40G", "--priority", "5")
    small = jbox.queue.submit("command", {"argv": py(ENV_PROBE)}, OS_USER, gpus=1).id
    both = jbox.queue.submit("command", {"argv": py(ENV_PROBE)}, OS_USER, gpus=2, cpu_fallback=False).id  # waits until both GPUs are free
    r = jbox.worker_once("--slots", "3")
    assert "2 GPU(s) [0, 1]" in r.stdout
    jobs = {name: jbox.job(i) for name, i in (("big", big), ("small", small), ("both", both))}
    assert {j.status for j in jobs.values()} == {"succeeded"}
    assert jobs["big"].devices == [1] and jobs["small"].devices == [0]  # 40 GB skips the 24 GB GPU
    assert env_of(jbox.log(big))["CUDA_VISIBLE_DEVICES"] in ("1", "GPU-big")
    assert env_of(jbox.log(small))["CUDA_VISIBLE_DEVICES"] in ("0", "GPU-small")
    # the 2-GPU job started only once both GPUs were released, and got both
    assert jobs["both"].devices == [0, 1]
    assert jobs["both"].started_at >= max(jobs["big"].ended_at, jobs["small"].ended_at)
    assert env_of(jbox.log(both))["CUDA_VISIBLE_DEVICES"] in ("0,1", "GPU-small,GPU-big")


def test_gpu_job_falls_back_to_cpu_after_its_wait(jbox: JobBox) -> None:
    q = jbox.queue
    waits = q.submit("command", {"argv": py(ENV_PROBE)}, OS_USER, gpus=1, cpu_fallback=False).id
    falls_back = q.submit("command", {"argv": py(ENV_PROBE)}, OS_USER, gpus=1, wait_gpu_s=1).id
    cpu = q.submit("command", {"argv": py(ENV_PROBE)}, OS_USER).id
    time.sleep(1.1)
    jbox.worker_once("--slots", "3")  # no nvidia-smi: no GPUs
    assert jbox.job(waits).status == "queued"
    fb = jbox.job(falls_back)
    assert fb.status == "succeeded" and fb.devices == []
    assert env_of(jbox.log(falls_back))["CUDA_VISIBLE_DEVICES"] == ""
    assert jbox.job(cpu).status == "succeeded"


def test_worker_gpu_selection_from_the_inventory(jbox: JobBox) -> None:
    inventory = Inventory((Gpu(0, "L4", 24000, 4000, 50), Gpu(1, "A100", 81000, 1000, 0), Gpu(2, "A100", 81000, 0, 0)))
    states = Worker(jbox.queue, jbox.home, inventory=lambda: inventory).gpu_states()
    assert [(g.index, g.memory_total_mb, g.memory_free_mb, g.allocated) for g in states] == [
        (0, 24000, 20000, False), (1, 81000, 80000, False), (2, 81000, 81000, False),
    ]  # fmt: skip
    assert [g.index for g in Worker(jbox.queue, jbox.home, gpus="0,2", inventory=lambda: inventory).gpu_states()] == [0, 2]
    assert Worker(jbox.queue, jbox.home, gpus="none", inventory=lambda: inventory).gpu_states() == []
    assert [g.index for g in parse_gpus("1, 7", inventory)] == [1]


def test_gpu_job_device_indices_mean_the_same_gpus_to_cuda(jbox: JobBox) -> None:
    """nvidia-smi indices are PCI-bus order; CUDA's default order is fastest-first. A job placed on
    nvidia-smi GPU 1 must see that GPU: the worker has to pin CUDA_DEVICE_ORDER=PCI_BUS_ID (or pass UUIDs)."""
    inventory = Inventory((Gpu(0, "NVIDIA L4", 24000, 0, 0, "GPU-small"), Gpu(1, "NVIDIA A100 80GB", 81000, 0, 0, "GPU-big")))
    job_id = jbox.submit_command(ENV_PROBE, "--gpus", "1", "--gpu-memory", "40G")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        Worker(jbox.queue, jbox.home, inventory=lambda: inventory, poll_s=0.1).run(once=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    job = jbox.job(job_id)
    assert job.status == "succeeded" and job.devices == [1]
    env = env_of(jbox.log(job_id))
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-big" or (
        env["CUDA_VISIBLE_DEVICES"] == "1" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    ), f"job on nvidia-smi GPU 1 got {env}: CUDA may enumerate the GPUs in another order"


def test_a_worker_that_lost_its_lease_does_not_finish_the_new_attempt(jbox: JobBox) -> None:
    """Worker A stalls past its lease; the job is recovered and worker B runs it. When A wakes up and
    reaps its (old) process, B's attempt must stay B's: A may not mark it finished."""
    q = jbox.queue
    job_id = q.submit("command", {"argv": py("pass")}, OS_USER, max_attempts=2).id
    a = Worker(q, jbox.home, gpus="none", inventory=lambda: Inventory(()), lease_s=1)
    a.tick()
    assert set(a.running) == {job_id}
    a.running[job_id].proc.wait(30)
    # A stalls (no heartbeat) past its lease: the job is recovered and claimed by B
    assert q.recover(now=time.time() + 60) == [job_id]
    [(claimed, _)] = q.claim("worker-B", [], slots=1, lease_s=30)
    assert claimed.id == job_id and claimed.attempts == 2
    a.tick()  # A wakes up
    job = q.get(job_id)
    assert (job.status, job.worker) == ("running", "worker-B"), (
        f"stale worker A finished job {job_id} while worker-B runs it: {job.status}, exit {job.exit_code}"
    )
