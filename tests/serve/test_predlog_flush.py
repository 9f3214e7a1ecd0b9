"""A failed flush of one deployment's batch: the other deployments' records are written once and never again,
and the failed deployment's records are all written once it can be written again (no duplicates, nothing lost).

The failure is real, not mocked: a plain file stands where the deployment's day folder must go,
so creating that folder fails (even for root) until the file is removed. First the writer
(`PredictionLog`) on a real box, flushed by hand; then the whole path — `Offload` feeding a
real sidecar process that flushes every 0.2 s and keeps retrying.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mlbox.api.context import sidecar_env
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.worker import Offload
from mlbox.serve.predlog.writer import PredictionLog

from ..conftest import OS_USER
from .conftest import meta_rows, wait_for

DAY = "2023-11-14"  # the UTC day of the records' timestamps (1.7e9 s)


def record(i: int, deployment: str) -> Record:
    return Record(1.7e9 + i, f"{deployment}-{i}", deployment, "m:1", "primary", False, 0.4, None, "[]", "[]", None)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "box"
    Box.create(load_settings(home, environ={}), OS_USER).close()
    return home


def block(home: Path, deployment: str) -> Path:
    """A file where the deployment's day folder must be created: every write of its batch fails."""
    folder = home / "predictions" / deployment
    folder.mkdir(parents=True, exist_ok=True)
    blocker = folder / DAY
    blocker.write_text("not a folder")
    return blocker


def logged_ids(home: Path) -> Counter[str]:
    """request_id -> how many times it is in the log, read from the cataloged files."""
    ids: Counter[str] = Counter()
    for batch in meta_rows(home, "SELECT path FROM prediction_batches"):
        ids.update(pq.read_table(home / batch["path"], columns=["request_id"]).column("request_id").to_pylist())
    return ids


def test_a_failing_deployment_never_makes_another_be_written_twice(home: Path) -> None:
    blocker = block(home, "b")
    with Box(load_settings(home, environ={})) as box:
        log = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
        log.extend([record(i, d) for i in range(20) for d in ("a", "b", "c")], marker=1)
        with pytest.raises(OSError):
            log.flush()
        assert logged_ids(home) == Counter({f"{d}-{i}": 1 for i in range(20) for d in ("a", "c")})
        assert log.backlog == 20 and log.written == 40
        assert log.durable == 0  # b's records are not written: the worker must keep them
        log.extend([record(100 + i, "a") for i in range(5)], marker=2)
        with pytest.raises(OSError):
            log.flush()  # still failing: a's new records are written, its old ones not again
        assert logged_ids(home)["a-0"] == 1 and logged_ids(home)["a-100"] == 1
        assert log.backlog == 20 and log.durable == 0
        blocker.unlink()
        assert log.flush() == 20
        assert log.durable == 2 and log.backlog == 0 and log.written == 65
    ids = logged_ids(home)
    assert set(ids.values()) == {1} and len(ids) == 65
    rows = meta_rows(home, "SELECT deployment, sum(rows) AS n, count(*) AS files FROM prediction_batches GROUP BY deployment")
    assert {r["deployment"]: (r["n"], r["files"]) for r in rows} == {"a": (25, 2), "b": (20, 1), "c": (20, 1)}
    assert not list((home / "predictions").rglob(".tmp-*"))


def test_the_sidecar_keeps_retrying_one_deployment_and_logs_everything_once(home: Path) -> None:
    blocker = block(home, "b")
    command = [sys.executable, "-m", "mlbox.serve.predlog.sidecar", str(home), "1", "0.2", "200000"]
    errors: list[str] = []
    off = Offload(command, env=sidecar_env(), on_error=errors.append)
    off.start()
    try:
        for i in range(30):
            off.append(record(i, "a"))
            off.append(record(i, "b"))
        wait_for(lambda: off.counter("written") == 30, 30, "a's records")
        time.sleep(1.0)  # five more flushes, each failing for b
        assert off.counter("written") == 30 and logged_ids(home)["a-0"] == 1
        assert any("flush failed" in e for e in errors), errors
        assert off.backlog == 60  # the worker keeps the frame until all of it is written
        for i in range(30, 40):
            off.append(record(i, "a"))
        wait_for(lambda: off.counter("written") == 40, 30, "a's later records")
        blocker.unlink()
        wait_for(lambda: off.counter("written") == 70, 30, "b's records once b can be written")
        wait_for(lambda: off.backlog == 0, 30, "the worker to learn they are written")
    finally:
        off.close()
    ids = logged_ids(home)
    assert len(ids) == 70 and set(ids.values()) == {1}, [k for k, n in ids.items() if n > 1][:5]
    assert off.dropped == 0 and off.restarts == 0
