"""Tracking and registry: buffered metrics, run status, compare-and-set aliases, atomic registration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import mlbox
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import Conflict, NotFound, UsageError


@pytest.fixture
def box(tmp_path: Path) -> Box:
    b = Box.create(load_settings(tmp_path / "box", environ={}), "tester")
    yield b
    b.close()


def _register(box: Box, tmp_path: Path, name: str = "churn", payload: bytes = b"model") -> str:
    f = tmp_path / f"m-{time.monotonic_ns()}.bin"
    f.write_bytes(payload)
    v = box.registry.register(
        name,
        files={"native/model.bin": f},
        flavor="xgboost",
        task="classification",
        signature={"columns": [{"name": "x", "kind": "numeric", "dtype": "float64", "levels": [], "required": True,
                                "nullable": False}], "task": "classification", "target": "y", "classes": [0, 1]},  # fmt: skip
        reference_stats={},
        metrics={"roc_auc": 0.8},
        lineage={"dataset_fingerprint": "abc"},
        run_id=None,
        onnx_max_abs_diff=0.0,
        onnx_tolerance=1e-4,
        actor="tester",
    )
    return v.ref


def test_metrics_are_buffered_and_flushed_on_exit(box: Box) -> None:
    with box.start_run("exp") as run:
        for i in range(100):
            run.log_metric("loss", 1 / (i + 1), step=i)
        # nothing forces a flush before 5,000 rows or 1 s: the buffer holds them
        assert box.db.scalar("SELECT count(*) FROM metrics WHERE run_id = ?", (run.id,)) < 100
        run.log_params({"lr": 0.1})
    assert box.db.scalar("SELECT count(*) FROM metrics WHERE run_id = ?", (run.id,)) == 100
    info = box.tracking.run(run.id)
    assert info.status == "finished" and info.params == {"lr": 0.1} and info.duration_s is not None
    assert box.tracking.metric_history(run.id, "loss")[-1] == (99, pytest.approx(0.01))
    assert info.environment["python"] and info.env_hash


def test_failed_and_interrupted_runs_are_marked(box: Box) -> None:
    with pytest.raises(ValueError), box.start_run("exp") as run:
        raise ValueError("boom")
    assert box.tracking.run(run.id).status == "failed" and "boom" in (box.tracking.run(run.id).error or "")
    with pytest.raises(KeyboardInterrupt), box.start_run("exp") as run2:
        raise KeyboardInterrupt
    assert box.tracking.run(run2.id).status == "interrupted"


def test_nan_metric_is_stored_as_null(box: Box) -> None:
    with box.start_run("exp") as run:
        run.log_metric("loss", float("nan"))
    assert box.tracking.latest_metrics([run.id])[run.id] == {"loss": None}


def test_public_start_run(tmp_path: Path) -> None:
    home = tmp_path / "box"
    Box.create(load_settings(home, environ={}), "tester").close()
    with mlbox.start_run(experiment="churn", home=str(home)) as run:
        run.log_metric("auc", 0.9)
    with mlbox.open_box(str(home)) as b:
        assert b.tracking.latest_metrics([run.id])[run.id] == {"auc": 0.9}


def test_register_versions_artifacts_and_export(box: Box, tmp_path: Path) -> None:
    assert _register(box, tmp_path) == "churn:1"
    assert _register(box, tmp_path, payload=b"other") == "churn:2"
    v = box.registry.get("churn:latest")
    assert v.version == 2 and "native/model.bin" in v.artifacts
    out = box.registry.export("churn:1", "native", tmp_path / "out")
    assert out[0].read_bytes() == b"model"
    with pytest.raises(NotFound):
        box.registry.export("churn:1", "onnx", tmp_path / "x.onnx")
    # a corrupted artifact is refused, not served
    sha = box.registry.get("churn:1").artifacts["native/model.bin"]["sha256"]
    path = box.artifacts.path(sha)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(Exception, match="corrupt"):
        box.registry.export("churn:1", "native", tmp_path / "out2")


def test_aliases_are_compare_and_set(box: Box, tmp_path: Path) -> None:
    for _ in range(3):
        _register(box, tmp_path)
    box.registry.set_alias("churn:1", "production", "a", expected=None)
    box.registry.set_alias("churn:2", "production", "a", expected=1)
    with pytest.raises(Conflict, match="someone else moved it"):
        box.registry.set_alias("churn:3", "production", "b", expected=1)  # saw 1, but it is 2 now
    assert box.registry.get("churn:production").version == 2
    with pytest.raises(UsageError):
        box.registry.set_alias("churn:3", "canary", "a")
    actions = [e.action for e in box.audit.entries(action="models.promote")]
    assert actions == ["models.promote", "models.promote"]


def test_concurrent_promotions_one_wins(box: Box, tmp_path: Path) -> None:
    for _ in range(3):
        _register(box, tmp_path)
    box.registry.set_alias("churn:1", "staging", "a")
    home = box.paths.home
    script = textwrap.dedent(
        f"""
        import sys
        from mlbox.box import Box
        from mlbox.config import load_settings
        from mlbox.errors import Conflict
        box = Box(load_settings({str(home)!r}, environ={{}}))
        try:
            box.registry.set_alias(sys.argv[1], "staging", "p", expected=1)
            print("won")
        except Conflict:
            print("conflict")
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, ref], stdout=subprocess.PIPE, text=True) for ref in ("churn:2", "churn:3")]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["conflict", "won"]


def test_archive_drops_aliases_and_blocks_promotion(box: Box, tmp_path: Path) -> None:
    _register(box, tmp_path)
    box.registry.set_alias("churn:1", "staging", "a")
    v = box.registry.archive("churn:1", "a")
    assert v.archived_at and v.aliases == []
    with pytest.raises(Conflict, match="archived"):
        box.registry.set_alias("churn:1", "production", "a")


def test_kill_during_registration_leaves_no_half_version(box: Box, tmp_path: Path) -> None:
    """A registering process killed mid-way leaves either no version or a whole one."""
    home = box.paths.home
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 * 1024 * 1024))
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from mlbox.box import Box
        from mlbox.config import load_settings
        box = Box(load_settings({str(home)!r}, environ={{}}))
        print("start", flush=True)
        box.registry.register("big", files={{"native/a.bin": Path({str(big)!r}), "native/b.bin": Path({str(big)!r})}},
            flavor="xgboost", task="classification", signature={{"columns": []}}, reference_stats={{}}, metrics={{}},
            lineage={{}}, run_id=None, onnx_max_abs_diff=None, onnx_tolerance=None, actor="p")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    rows = box.db.query("SELECT * FROM model_versions WHERE name = 'big'")
    for row in rows:  # if it got that far, everything it names is present and intact
        v = box.registry.get(f"big:{row['version']}")
        for meta in v.artifacts.values():
            box.artifacts.open_verified(meta["sha256"])
    assert box.audit.verify().ok


def test_alias_reads_are_consistent_under_threads(box: Box, tmp_path: Path) -> None:
    for _ in range(2):
        _register(box, tmp_path)
    errors: list[BaseException] = []

    def flip(n: int) -> None:
        try:
            for _ in range(20):
                cur = box.registry.holder("churn", "staging")
                try:
                    box.registry.set_alias(f"churn:{n}", "staging", "t", expected=cur)
                except Conflict:
                    pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert box.registry.holder("churn", "staging") in (1, 2)
