"""Crash leftovers and `mlbox doctor`: process identity of runs, the 0007 migration, the artifact sweeps.

Real SQLite files and real processes throughout: a "dead" process is a child that has exited,
a reused pid is the live test process recorded with another start time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlbox import doctor, hardware
from mlbox.box import Box
from mlbox.store.artifacts import TMP_PREFIX, ArtifactStore
from mlbox.store.migrations import MIGRATIONS, migrate
from mlbox.store.sqlite import Database
from mlbox.tracking import process
from mlbox.tracking.process import ProcessIdentity
from mlbox.tracking.store import TrackingStore

from .conftest import OS_USER


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def old(path: Path, seconds: float = 7200) -> None:
    """Make `path` look written `seconds` ago (the clock is the boundary here, not the sweep)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


# process identity ------------------------------------------------------------------


def test_process_identity_tells_live_dead_reused_and_foreign() -> None:
    me = process.current()
    assert me.pid == os.getpid() and me.host == socket.gethostname()
    assert process.is_alive(me) is True
    assert process.is_alive(ProcessIdentity(dead_pid(), me.started, me.host)) is False
    assert process.is_alive(ProcessIdentity(me.pid, me.started - 3600, me.host)) is False  # pid reused by us
    assert process.is_alive(ProcessIdentity(dead_pid(), me.started, "another-host")) is None


def test_opening_tracking_marks_only_runs_of_dead_processes_killed(box: Box) -> None:
    me = process.current()
    tracking = box.tracking
    live = tracking.create_run("exp", "live", OS_USER)
    dead = tracking.create_run("exp", "dead", OS_USER, process=ProcessIdentity(dead_pid(), me.started, me.host))
    reused = tracking.create_run("exp", "reused", OS_USER, process=ProcessIdentity(me.pid, me.started - 100, me.host))
    foreign = tracking.create_run("exp", "foreign", OS_USER, process=ProcessIdentity(1, 0.0, "another-host"))
    box.tracking.finish(tracking.create_run("exp", "done", OS_USER, process=ProcessIdentity(dead_pid(), 0.0, me.host)), "finished")
    assert {r.id for r in tracking.stale_runs()} == {dead, reused}

    reopened = TrackingStore(box.db, box.artifacts)  # what the next `mlbox runs list` does
    status = {r.name: r.status for r in reopened.runs()}
    assert status == {"live": "running", "dead": "killed", "reused": "killed", "foreign": "running", "done": "finished"}
    info = reopened.run(dead)
    assert info.ended_at is not None and "ended without ending the run" in (info.error or "")
    assert reopened.run(live).pid == me.pid and reopened.run(foreign).host == "another-host"
    assert reopened.reap() == []  # idempotent


def test_metric_flushes_move_the_heartbeat(box: Box) -> None:
    with box.start_run("exp") as run:
        first = run.info().heartbeat_at
        time.sleep(0.01)
        run.log_metric("loss", 1.0)
        run.flush()
        assert run.info().heartbeat_at > first  # type: ignore[operator]


def test_migration_0007_keeps_every_run_and_its_children(tmp_path: Path) -> None:
    """A box at 0005 with a run, metrics, artifacts and a model version migrates with nothing lost."""
    db = Database(tmp_path / "meta.db")
    before = tuple(m for m in MIGRATIONS if m.name < "0007")
    migrate(db, before)
    db.execute("INSERT INTO experiments (name, created_at, created_by) VALUES ('e', 't', 'u')")
    db.execute("INSERT INTO runs (id, experiment_id, name, status, user, started_at) VALUES ('r1', 1, 'n', 'running', 'u', 't')")
    db.execute("INSERT INTO metrics VALUES ('r1', 'loss', 1, 0.5, 0)")
    db.execute("INSERT INTO run_artifacts VALUES ('r1', 'native/model.ubj', 'ab', 3)")
    db.execute("INSERT INTO models (name, created_at, created_by) VALUES ('m', 't', 'u')")
    db.execute(
        "INSERT INTO model_versions (name, version, run_id, flavor, task, signature, reference_stats, metrics, artifacts, "
        "lineage, created_at, created_by) VALUES ('m', 1, 'r1', 'xgboost', 'classification', '{}', '{}', '{}', '{}', '{}', 't', 'u')"
    )
    assert "0007_run_process" in migrate(db)
    assert db.integrity() == []
    row = db.one("SELECT * FROM runs WHERE id = 'r1'")
    assert row is not None and (row["status"], row["pid"], row["host"]) == ("running", None, None)
    assert db.scalar("SELECT count(*) FROM metrics") == db.scalar("SELECT count(*) FROM run_artifacts") == 1
    db.execute("UPDATE runs SET status = 'killed' WHERE id = 'r1'")  # the new status is allowed
    with pytest.raises(Exception, match="FOREIGN KEY"):
        db.execute("INSERT INTO metrics VALUES ('nope', 'loss', 1, 0.5, 0)")  # foreign keys still enforced
    tracking = TrackingStore(db, ArtifactStore(tmp_path / "artifacts"))
    assert [r.id for r in tracking.untracked_runs()] == [] and tracking.run("r1").status == "killed"
    db.close()


# artifacts -------------------------------------------------------------------------


def test_opening_the_artifact_store_sweeps_temporary_files_of_dead_processes(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    root.mkdir()
    gone = dead_pid()
    (root / f"{TMP_PREFIX}{gone}-abc").write_bytes(b"half a file")
    (root / f"{TMP_PREFIX}{gone}-dir").mkdir()
    (root / f"{TMP_PREFIX}{gone}-dir" / "model.onnx").write_bytes(b"x")
    (root / f"{TMP_PREFIX}{os.getpid()}-mine").write_bytes(b"being written")
    (root / f"{TMP_PREFIX}garbage").write_bytes(b"no pid")
    ArtifactStore(root)
    assert sorted(p.name for p in root.iterdir()) == [f"{TMP_PREFIX}{os.getpid()}-mine"]


def test_scratch_lives_in_the_box_and_is_removed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    with store.scratch() as work:
        assert work.parent == store.root and work.name.startswith(f"{TMP_PREFIX}{os.getpid()}-")
        (work / "f").write_text("x")
        assert store.temporary() == []  # ours, alive
    assert not work.exists()


def test_unreferenced_artifacts_respect_the_grace_period(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    src = tmp_path / "f"
    src.write_bytes(b"kept")
    kept = store.put(src).sha256
    src.write_bytes(b"orphan")
    orphan = store.put(src).sha256
    src.write_bytes(b"young")
    young = store.put(src).sha256
    old(store.path(kept))
    old(store.path(orphan))
    assert [f.sha256 for f in store.unreferenced({kept}, grace_s=3600)] == [orphan]
    removed = store.remove_unreferenced({kept}, grace_s=3600)
    assert [f.sha256 for f in removed] == [orphan]
    assert not store.path(orphan).exists() and store.path(kept).exists() and store.path(young).exists()
    assert list(store.root.glob(f"{TMP_PREFIX}*")) == []


def test_storing_existing_content_again_refreshes_it(tmp_path: Path) -> None:
    """A writer about to name an old unreferenced file gets the grace period again."""
    store = ArtifactStore(tmp_path / "artifacts")
    src = tmp_path / "f"
    src.write_bytes(b"same bytes")
    sha = store.put(src).sha256
    old(store.path(sha))
    assert store.put(src).sha256 == sha
    assert store.unreferenced(set(), grace_s=3600) == []
    assert store.open_verified(sha) == store.path(sha)


# doctor ----------------------------------------------------------------------------


def test_doctor_reports_and_repairs_leftovers(box: Box, cli) -> None:  # type: ignore[no-untyped-def]
    me = process.current()
    stale = box.tracking.create_run("exp", "stale", OS_USER, process=ProcessIdentity(dead_pid(), me.started, me.host))
    live = box.tracking.create_run("exp", "live", OS_USER)
    src = box.paths.home / "blob"
    src.write_bytes(b"orphan")
    orphan = box.artifacts.put(src).sha256
    old(box.artifacts.path(orphan))
    (box.paths.artifacts / f"{TMP_PREFIX}{dead_pid()}-x").write_bytes(b"tmp")
    online = Database(box.paths.online_db)
    online.execute("CREATE TABLE fv_usage_v1__rebuild (k INTEGER)")
    online.close()
    home = str(box.paths.home)

    checks = {c["name"]: c for c in cli("--home", home, "--json", "doctor").json()}
    assert checks["stale runs"]["status"] == "warn" and stale in checks["stale runs"]["detail"]
    assert live not in checks["stale runs"]["detail"]
    assert checks["unreferenced artifacts"]["status"] == "warn" and "1 file(s)" in checks["unreferenced artifacts"]["detail"]
    assert checks["temporary files"]["status"] == "warn"
    assert checks["online tables"]["status"] == "warn" and "fv_usage_v1__rebuild" in checks["online tables"]["detail"]

    result = cli("--home", home, "--json", "doctor", "--repair")
    assert result.exit_code == 0, result.exception
    repaired = result.json()["repaired"]
    assert repaired == {
        "killed_runs": [stale],
        "removed_artifacts": 1,
        "removed_bytes": 6,
        "removed_temporary": 1,
        "dropped_tables": ["fv_usage_v1__rebuild"],
        "signed_artifacts": 0,
    }
    after = {c["name"]: c["status"] for c in cli("--home", home, "--json", "doctor").json()}
    assert all(after[n] == "ok" for n in ("stale runs", "unreferenced artifacts", "temporary files", "online tables"))
    assert box.tracking.run(stale).status == "killed" and box.tracking.run(live).status == "running"
    entry = box.audit.entries(limit=1)[0]
    assert (entry.action, entry.actor, entry.details["killed_runs"]) == ("box.repair", OS_USER, [stale])
    assert box.audit.verify().ok


def test_doctor_repair_needs_an_admin(box: Box, cli, kernel_user) -> None:  # type: ignore[no-untyped-def]
    box.identity.add_user(OS_USER, "vic", "viewer", "bob")
    kernel_user("bob")
    result = cli("--home", str(box.paths.home), "doctor", "--repair")
    assert result.exit_code != 0 and "box.admin" in (getattr(result.exception, "hint", None) or "")


# onnxruntime providers ---------------------------------------------------------------

H100 = hardware.Inventory((hardware.Gpu(0, "NVIDIA H100", 81559, 0, 0),))
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def test_doctor_names_the_provider_models_run_on_here(box: Box, cli) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    checks = {c["name"]: c for c in cli("--home", str(box.paths.home), "--json", "doctor").json()}
    expected = CUDA if CUDA in ort.get_available_providers() else CPU
    assert checks["onnx providers"]["status"] == "ok"
    assert f"models run on {expected}" in checks["onnx providers"]["detail"]
    assert checks["onnx providers"]["detail"].startswith("onnxruntime")


def test_doctor_onnx_check_on_gpu_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU is the faked boundary: onnxruntime's provider list and nvidia-smi's inventory."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    gpu_build = doctor.check_onnx(H100)
    assert gpu_build.status == "ok" and f"models run on {CUDA}" in gpu_build.detail
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    cpu_build = doctor.check_onnx(H100)
    assert cpu_build.status == "warn" and "onnxruntime-gpu" in cpu_build.detail
    assert doctor.check_onnx(hardware.Inventory((), "no GPU")).status == "ok"
