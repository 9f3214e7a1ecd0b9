"""`mlbox jobs ...`: submit options and validation, permissions, list/show/logs output, cancel, retry, quota."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlbox.jobs.placement import GpuState

from ..conftest import OS_USER
from .conftest import JobBox, py


@pytest.fixture
def mlbox(jbox: JobBox, cli_run):  # type: ignore[no-untyped-def]
    """`mlbox ARGS` through the console-script entry point, in this process, on jbox's box."""

    def invoke(*args: str, token: str | None = None):  # type: ignore[no-untyped-def]
        env = {"MLBOX_HOME": str(jbox.home)}
        if token:
            env["MLBOX_TOKEN"] = token
        return cli_run(*args, env=env)

    return invoke


def token_for(jbox: JobBox, name: str, role: str) -> str:
    jbox.box.identity.add_user(OS_USER, name, role)
    return jbox.box.identity.create_token(OS_USER, name)[1]


def write_plain_spec(folder: Path) -> Path:
    spec = folder / "plain.yaml"
    spec.write_text("experiment: plain\ntask: classification\ndata: {path: plain.csv}\ntarget: y\nflavor: xgboost\n")
    return spec


def test_data_scientist_cannot_submit_a_command_job(jbox: JobBox) -> None:
    token = token_for(jbox, "bob", "data-scientist")
    r = jbox.mlbox("jobs", "submit", "command", "--", *py("print(1)"), MLBOX_TOKEN=token)
    assert r.returncode == 5, r.stderr
    assert "jobs.command" in r.stderr and "bob" in r.stderr
    assert jbox.queue.list_jobs() == []
    # an admin may
    r = jbox.mlbox("jobs", "submit", "command", "--", *py("print(1)"))
    assert r.returncode == 0, r.stderr
    assert [j.submitted_by for j in jbox.queue.list_jobs()] == [OS_USER]


def test_role_checks_of_the_other_commands(jbox: JobBox, mlbox, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    scientist = token_for(jbox, "bob", "data-scientist")
    viewer = token_for(jbox, "vera", "viewer")
    monkeypatch.chdir(tmp_path)
    write_plain_spec(tmp_path)
    r = mlbox("--json", "jobs", "submit", "train", "plain.yaml", "--register", token=scientist)
    assert r.exit_code == 0, r.stderr
    job = jbox.queue.get(json.loads(r.stdout)["id"])
    assert job.submitted_by == "bob" and job.payload == {"spec": str(tmp_path / "plain.yaml"), "register": True}
    assert mlbox("jobs", "submit", "materialize", token=scientist).exit_code == 0
    assert mlbox("jobs", "submit", "train", "plain.yaml", token=viewer).exit_code == 5
    assert mlbox("jobs", "cancel", str(job.id), token=viewer).exit_code == 5
    assert mlbox("jobs", "quota", "default", "--max-running", "1", token=scientist).exit_code == 5
    assert mlbox("worker", "--once", token=viewer).exit_code == 5
    assert mlbox("--json", "jobs", "list", token=viewer).exit_code == 0
    assert jbox.queue.get(job.id).status == "queued"


def test_submit_options_reach_the_job(jbox: JobBox, mlbox) -> None:  # type: ignore[no-untyped-def]
    r = mlbox("--json", "jobs", "submit", "command", "--priority", "7", "--project", "vision", "--gpus", "2",
              "--gpu-memory", "8G", "--cpus", "4", "--memory", "512M", "--timeout", "2h", "--no-cpu-fallback",
              "--gpu-wait", "30s", "--retries", "2", "--", *py("print(1)"))  # fmt: skip
    assert r.exit_code == 0, r.stderr
    out = r.json()
    job = jbox.queue.get(out["id"])
    assert out["status"] == "queued" and out["project"] == "vision"
    assert (job.priority, job.project, job.gpus, job.gpu_memory_mb, job.cpus, job.memory_mb) == (7, "vision", 2, 8192, 4.0, 512)
    assert (job.timeout_s, job.cpu_fallback, job.wait_gpu_s, job.max_attempts) == (7200, False, 30, 3)
    assert job.payload == {"argv": py("print(1)")}
    r = mlbox("--json", "jobs", "submit", "materialize", "usage", "--full")
    assert r.exit_code == 0 and jbox.queue.get(r.json()["id"]).payload == {"view": "usage", "full": True}
    r = mlbox("--json", "jobs", "submit", "command", "--gpu-memory", "1.5GiB", "--", "true")
    assert jbox.queue.get(r.json()["id"]).gpu_memory_mb == 1536


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["bogus"], 2, "unknown job type"),
        (["monitor"], 2, "monitor jobs take one argument"),
        (["monitor", "nope"], 3, "has no monitoring policy"),
        (["retention", "extra"], 2, "retention jobs take no arguments"),
        (["retention", "--every", "0s"], 2, "invalid duration"),
        (["command", "--every", "1d", "--", "true"], 2, "cannot be scheduled"),
        (["command"], 2, "need a command"),
        (["command", "--cpus", "-1", "--", "true"], 2, "resources must be positive"),
        (["command", "--cpus", "0", "--", "true"], 2, "resources must be positive"),
        (["command", "--gpus", "-1", "--", "true"], 2, ""),
        (["command", "--retries", "-1", "--", "true"], 2, ""),
        (["command", "--memory", "lots", "--", "true"], 2, "invalid memory size"),
        (["command", "--memory", "-4G", "--", "true"], 2, "invalid memory size"),
        (["command", "--gpu-memory", "8X", "--", "true"], 2, "invalid memory size"),
        (["command", "--timeout", "0s", "--", "true"], 2, "invalid duration"),
        (["command", "--timeout", "soon", "--", "true"], 2, "invalid duration"),
        (["command", "--project", "no such!", "--", "true"], 2, "project"),
        (["train"], 2, "one argument"),
        (["train", "missing.yaml"], 2, "not found"),
    ],
)
def test_submit_refuses_bad_input(jbox: JobBox, mlbox, args: list[str], code: int, message: str) -> None:  # type: ignore[no-untyped-def]
    r = mlbox("jobs", "submit", *args)
    assert r.exit_code == code, r.stdout + r.stderr
    assert message in r.stderr
    assert jbox.queue.list_jobs() == []


def test_submit_refuses_a_bad_train_spec(jbox: JobBox, mlbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: x\ntask: clustering\ndata: {path: d.csv}\ntarget: y\nflavor: xgboost\n")
    r = mlbox("jobs", "submit", "train", str(bad))
    assert r.exit_code == 2 and "task must be" in r.stderr
    assert jbox.queue.list_jobs() == []


def test_list_show_logs_output(jbox: JobBox, mlbox) -> None:  # type: ignore[no-untyped-def]
    q = jbox.queue
    gpu_job = q.submit("command", {"argv": ["true"]}, OS_USER, gpus=1, priority=1)
    cpu_job = q.submit("command", {"argv": ["true"]}, OS_USER)
    waiting = q.submit("command", {"argv": ["true"]}, OS_USER, project="vision")
    q.claim("w1", [GpuState(0, 80_000, 80_000)], slots=2, lease_s=30)

    r = mlbox("--json", "jobs", "list")
    assert r.exit_code == 0, r.stderr
    rows = {row["id"]: row for row in r.json()}
    assert set(rows) == {gpu_job.id, cpu_job.id, waiting.id}
    assert rows[gpu_job.id]["status"] == "running" and rows[gpu_job.id]["devices"] == [0]
    assert rows[cpu_job.id]["devices"] == "cpu" and rows[cpu_job.id]["worker"] == "w1"
    assert rows[waiting.id]["status"] == "queued" and rows[waiting.id]["devices"] is None
    assert {"id", "type", "project", "priority", "status", "gpus", "attempts", "submitted"} <= set(rows[waiting.id])
    r = mlbox("--json", "jobs", "list", "--status", "queued")
    assert [row["id"] for row in r.json()] == [waiting.id]
    assert len(mlbox("--json", "jobs", "list", "-n", "1").json()) == 1

    r = mlbox("jobs", "list")
    assert r.exit_code == 0 and f"GPUs: 0 → job {gpu_job.id}" in r.stdout and "running" in r.stdout

    r = mlbox("--json", "jobs", "show", str(gpu_job.id))
    assert r.exit_code == 0 and r.json()["devices"] == [0] and r.json()["attempts"] == 1
    assert mlbox("jobs", "show", "999").exit_code == 3

    # logs: none yet → not found; once written, printed as is
    r = mlbox("jobs", "logs", str(waiting.id))
    assert r.exit_code == 3 and "no log yet" in r.stderr
    log = jbox.home / "logs" / "jobs" / f"{cpu_job.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("line one\nline two\n")
    r = mlbox("jobs", "logs", str(cpu_job.id))
    assert r.exit_code == 0 and r.stdout == "line one\nline two\n"


def test_cancel_retry_quota_commands(jbox: JobBox, mlbox) -> None:  # type: ignore[no-untyped-def]
    q = jbox.queue
    job = q.submit("command", {"argv": ["true"]}, OS_USER)
    r = mlbox("--json", "jobs", "cancel", str(job.id))
    assert r.exit_code == 0 and r.json()["status"] == "cancelled"
    assert mlbox("jobs", "cancel", str(job.id)).exit_code == 4  # already ended
    r = mlbox("--json", "jobs", "retry", str(job.id))
    assert r.exit_code == 0 and r.json()["status"] == "queued"
    assert mlbox("jobs", "retry", str(job.id)).exit_code == 4  # queued: nothing to retry
    assert mlbox("jobs", "cancel", "999").exit_code == 3

    r = mlbox("jobs", "quota", "vision", "--max-running", "1", "--max-gpus", "2")
    assert r.exit_code == 0, r.stderr
    row = jbox.box.db.one("SELECT * FROM job_quotas WHERE project = 'vision'")
    assert (row["max_running"], row["max_gpus"]) == (1, 2)
