"""The batch rewrite primitive: rows removed under a new snapshot, old snapshots never read them, crashes stay consistent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import ValidationError
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.rewrite import key_filter, older_than, plan, rewrite_view
from mlbox.features.store import FeatureStore

from ..conftest import OS_USER

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})
VIEW = FeatureView("prof", "customer", "ts", (Field("x", "int64"), Field("note", "string")))


@pytest.fixture
def fs(box: Box) -> FeatureStore:
    return box.features


def _frame(ids: list[int], day: int, x0: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": ids, "ts": [T0 + pd.Timedelta(days=day)] * len(ids), "x": [x0 + i for i in ids], "note": [f"n{i}" for i in ids]}
    )


def _loaded(fs: FeatureStore) -> tuple[int, int]:
    fs.apply([CUSTOMER, VIEW])
    fs.ingest("prof", _frame([1, 2, 3], 0, 100))
    first = fs.snapshot()
    fs.ingest("prof", _frame([2, 4], 1, 200))
    return first, fs.snapshot()


def _rows(fs: FeatureStore, snapshot: int | None = None) -> list[tuple[int, int]]:
    _, rows = fs.sql("SELECT customer_id, x FROM prof ORDER BY customer_id, x", snapshot, protected="raw")
    return [(int(a), int(b)) for a, b in rows]


def test_rewrite_removes_rows_under_a_new_snapshot_and_old_snapshots_never_see_them(fs: FeatureStore) -> None:
    first, second = _loaded(fs)
    version = fs.view("prof")
    drop = key_filter(version, {"customer_id": "2"})  # typed per the join key: "2" becomes the integer 2
    assert drop is not None and drop.sql == '"customer_id" = 2'
    old = {b.id: b.path for b in fs.catalog.batches("prof", 1)}

    dry = rewrite_view(fs.catalog, fs.offline, "prof", drop, actor="t", reason="erasure", dry_run=True)
    assert dry.dry_run and dry.rows_removed == 2 and len(dry.batches) == 2
    assert {b.id for b in fs.catalog.batches("prof", 1)} == set(old)  # nothing touched

    result = rewrite_view(fs.catalog, fs.offline, "prof", drop, actor="t", reason="erasure")
    assert result.rows_removed == 2 and result.commit_seq is not None and result.commit_seq > second
    for path in old.values():
        assert not (fs.paths.home / path).exists()  # old files unlinked after the commit
    assert _rows(fs) == [(1, 101), (3, 103), (4, 204)]
    # an old snapshot reads the rewritten batches: the same rows minus the removed ones, no crash
    assert _rows(fs, first) == [(1, 101), (3, 103)]
    assert _rows(fs, second) == [(1, 101), (3, 103), (4, 204)]
    live = fs.catalog.batches("prof", 1)
    assert [b.replaces for b in live] == sorted(old) and [b.visible_at for b in live] == [first, second]
    gone = fs.db.query("SELECT stats, superseded_seq FROM feature_batches WHERE id IN (?, ?)", tuple(old))
    assert all(r["stats"] == "{}" and r["superseded_seq"] == result.commit_seq for r in gone)  # no values kept in stats
    assert fs.catalog.rewrites("prof")[0]["rows_removed"] == 2
    # a training set at the old snapshot: the removed entity has no values
    labels = pd.DataFrame({"customer_id": [1, 2], "ts": [T0 + pd.Timedelta(days=3)] * 2})
    ts = fs.training_set(labels, ["prof:x"], snapshot=first, timestamp="ts", protected="raw")
    assert ts.frame.sort_values("customer_id")["x"].tolist()[0] == 101
    assert pd.isna(ts.frame.sort_values("customer_id")["x"].tolist()[1])
    assert plan(fs.catalog, fs.offline, "prof", drop) == []  # idempotent: nothing left to remove


def test_a_batch_whose_every_row_goes_leaves_no_new_batch(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, VIEW])
    fs.ingest("prof", _frame([7], 0, 0))
    result = rewrite_view(fs.catalog, fs.offline, "prof", key_filter(fs.view("prof"), {"customer_id": 7}), actor="t", reason="erasure")  # type: ignore[arg-type]
    assert result.batches[0].new_batch is None and fs.catalog.batches("prof", 1) == []
    assert _rows(fs) == []


def test_retention_filter_and_bad_input(fs: FeatureStore) -> None:
    _loaded(fs)
    version = fs.view("prof")
    result = rewrite_view(fs.catalog, fs.offline, "prof", older_than(version, (T0 + pd.Timedelta(hours=12)).to_pydatetime()), actor="t", reason="retention")
    assert result.rows_removed == 3 and _rows(fs) == [(2, 202), (4, 204)]
    with pytest.raises(ValidationError):
        key_filter(version, {"customer_id": "not a number"})
    assert key_filter(version, {"other_key": 1}) is None
    with pytest.raises(ValidationError):
        older_than(version, pd.Timestamp("2025-01-01").to_pydatetime())


CRASH = """
import os, signal, sys
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.features.rewrite import key_filter, rewrite_view
box = Box(load_settings(sys.argv[1], environ={{}}))
fs = box.features
drop = key_filter(fs.view("prof"), {{"customer_id": 2}})
rewrite_view(fs.catalog, fs.offline, "prof", drop, actor="t", reason="erasure",
             after_commit=lambda: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_kill_9_between_commit_and_unlink_leaves_a_consistent_readable_store(home: Path) -> None:
    box = Box.create(load_settings(home, environ={}), OS_USER)
    try:
        _loaded(box.features)
        old = [b.path for b in box.features.catalog.batches("prof", 1)]
    finally:
        box.close()
    proc = subprocess.run([sys.executable, "-c", CRASH.format(), str(home)], capture_output=True, text=True, timeout=120,
                          env={**os.environ})  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert all((home / p).exists() for p in old)  # committed, not yet unlinked: orphans
    box = Box.create(load_settings(home, environ={}), OS_USER)
    try:
        fs = box.features  # opening the feature store sweeps the orphans
        assert not any((home / p).exists() for p in old)
        assert _rows(fs) == [(1, 101), (3, 103), (4, 204)]
        assert all((home / b.path).exists() for b in fs.catalog.batches("prof", 1))
    finally:
        box.close()


CRASH_IN_COMMIT = """
import os, signal, sys
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.features.rewrite import key_filter, rewrite_view
box = Box(load_settings(sys.argv[1], environ={{}}))
fs = box.features
drop = key_filter(fs.view("prof"), {{"customer_id": 2}})
rewrite_view(fs.catalog, fs.offline, "prof", drop, actor="t", reason="erasure",
             on_commit=lambda _result: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_kill_9_inside_the_commit_rolls_back_and_the_sweep_removes_the_new_files(home: Path) -> None:
    box = Box.create(load_settings(home, environ={}), OS_USER)
    try:
        _loaded(box.features)
        old = {b.path for b in box.features.catalog.batches("prof", 1)}
    finally:
        box.close()
    proc = subprocess.run([sys.executable, "-c", CRASH_IN_COMMIT.format(), str(home)], capture_output=True, text=True,
                          timeout=120, env={**os.environ})  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    renamed = {str(p.relative_to(home)) for p in (home / "features").rglob("*.parquet")} - old
    assert renamed  # the new batches were renamed into place, their rows never committed
    box = Box.create(load_settings(home, environ={}), OS_USER)
    try:
        fs = box.features
        assert {str(p.relative_to(home)) for p in (home / "features").rglob("*.parquet")} == old
        assert {b.path for b in fs.catalog.batches("prof", 1)} == old
        assert _rows(fs) == [(1, 101), (2, 102), (2, 202), (3, 103), (4, 204)]  # nothing was erased: run it again
        assert fs.catalog.rewrites() == []
    finally:
        box.close()
