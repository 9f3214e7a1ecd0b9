"""kill -9 of a real `mlbox train` mid-fit: the run becomes `killed`, doctor sees it, `--repair` cleans up.

The trainer is the console script in a subprocess, boosting many rounds so that it is still
fitting when it is killed at a random moment after its first metrics reached meta.db. While
it lives, neither `runs list` nor `doctor --repair` may touch its run.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from mlbox.store.artifacts import TMP_PREFIX
from mlbox.tracking.store import TrackingStore

from ..conftest import MLBOX_SCRIPT, wait_for
from .conftest import Project

LEFTOVER_CHECKS = ("stale runs", "unreferenced artifacts", "temporary files", "online tables")


def start_training(project: Project) -> subprocess.Popen[str]:
    """`mlbox train` of a spec that boosts far longer than the test waits (early stopping never triggers)."""
    spec = project.fast_spec(params={"n_estimators": 1_000_000, "max_depth": 3}, early_stopping_rounds=1_000_000)
    return subprocess.Popen(
        [str(MLBOX_SCRIPT), "--home", str(project.home), "train", str(spec)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def fitting_run(project: Project, proc: subprocess.Popen[str]) -> str | None:
    """The run's id once its first boosting rounds are in meta.db."""
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    conn = sqlite3.connect(project.home / "meta.db")
    try:
        row = conn.execute("SELECT run_id FROM metrics WHERE key = 'train_loss' LIMIT 1").fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def status(project: Project, run_id: str) -> str:
    conn = sqlite3.connect(project.home / "meta.db")
    try:
        return str(conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0])
    finally:
        conn.close()


def doctor(cli: Any, project: Project, *args: str) -> Any:
    result = cli("--home", str(project.home), "--json", "doctor", *args)
    assert result.exit_code == 0, (result.exception, result.stdout)
    return result.json()


def test_killed_train_is_marked_killed_and_repaired(churn: Project, cli) -> None:  # type: ignore[no-untyped-def]
    proc = start_training(churn)
    try:
        run_id = wait_for(lambda: fitting_run(churn, proc), 120, "the first boosting rounds")
        # alive: the doctor and the next `runs list` leave it alone
        live = doctor(cli, churn, "--repair")
        assert live["repaired"]["killed_runs"] == []
        assert {c["name"]: c["status"] for c in live["checks"]}["stale runs"] == "ok"
        listed = cli("--home", str(churn.home), "--json", "runs", "list")
        assert [r["status"] for r in listed.json()] == ["running"]
        scratch = [p for p in (churn.home / "artifacts").iterdir() if p.name.startswith(f"{TMP_PREFIX}{proc.pid}-")]
        assert len(scratch) == 1 and scratch[0].is_dir()  # the run's scratch folder, inside the box

        delay = random.uniform(0.0, 1.5)
        time.sleep(delay)
        assert proc.poll() is None, "the fit ended before the kill"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert status(churn, run_id) == "running", f"killed {delay:.2f}s into the fit"

    checks = {c["name"]: c for c in doctor(cli, churn)}
    assert checks["stale runs"]["status"] == "warn" and run_id in checks["stale runs"]["detail"]
    assert checks["temporary files"]["status"] == "warn" and scratch[0].name in checks["temporary files"]["detail"]

    repaired = doctor(cli, churn, "--repair")
    assert repaired["repaired"]["killed_runs"] == [run_id] and repaired["repaired"]["removed_temporary"] == 1
    after = {c["name"]: c["status"] for c in repaired["checks"]}
    assert all(after[name] == "ok" for name in LEFTOVER_CHECKS), after
    again = {c["name"]: c["status"] for c in doctor(cli, churn)}
    assert all(again[name] == "ok" for name in LEFTOVER_CHECKS) and "fail" not in again.values()

    info = churn.box.tracking.run(run_id)
    assert info.status == "killed" and f"process {proc.pid}" in (info.error or "")
    assert churn.box.tracking.metric_history(run_id, "train_loss")  # what it logged before dying is kept
    assert not scratch[0].exists()
    assert churn.box.audit.entries(limit=1)[0].action == "box.repair" and churn.box.audit.verify().ok


def test_runs_list_marks_a_killed_train_killed(churn: Project, cli) -> None:  # type: ignore[no-untyped-def]
    proc = start_training(churn)
    try:
        run_id = wait_for(lambda: fitting_run(churn, proc), 120, "the first boosting rounds")
        time.sleep(random.uniform(0.0, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    listed = cli("--home", str(churn.home), "--json", "runs", "list")
    assert [(r["run"], r["status"]) for r in listed.json()] == [(run_id, "killed")]
    assert not any(p.name.startswith(TMP_PREFIX) for p in (churn.home / "artifacts").iterdir())  # swept on open
    assert TrackingStore(churn.box.db, churn.box.artifacts).reap() == []


def test_a_finished_train_leaves_no_scratch(churn: Project, tmp_path: Path) -> None:
    result = churn.train(churn.fast_spec(), register=True)
    assert churn.box.tracking.run(result.run_id).status == "finished"
    assert not any(p.name.startswith(TMP_PREFIX) for p in (churn.home / "artifacts").iterdir())
    assert set(result.phase_seconds) == {"prepare", "load", "encode", "track", "fit", "evaluate", "gate", "save", "export", "register"}
    assert churn.box.tracking.run(result.run_id).tags["phase_seconds"].keys() == result.phase_seconds.keys()
