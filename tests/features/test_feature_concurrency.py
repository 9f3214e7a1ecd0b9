"""Several real processes on one box: readers never see a partial batch; a killed ingest leaves no trace."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlbox.box import Box
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.offline import TMP_PREFIX
from mlbox.features.store import FeatureStore

from .conftest import files_under, open_box, popen_worker

CUSTOMER = Entity("customer", {"customer_id": "int64"})
VIEW = FeatureView("v", "customer", "ts", (Field("a", "int64"),))


def test_readers_only_ever_see_complete_batches(fs: FeatureStore, box: Box, tmp_path: Path) -> None:
    """Two writer processes ingest batches of `rows` rows; three readers count rows the whole time."""
    per_writer, rows = 6, 3000
    batches = 2 * per_writer
    fs.apply([CUSTOMER, VIEW])
    labels = tmp_path / "labels.parquet"
    pd.DataFrame({"customer_id": np.arange(batches * rows), "ts": pd.Timestamp("2025-02-01T00:00:00Z")}).to_parquet(labels)
    home = str(box.paths.home)
    done = tmp_path / "done"
    readers = []
    for i in range(3):
        ready = tmp_path / f"ready{i}"
        readers.append((popen_worker("reader", home, "v", str(labels), str(ready), str(done)), ready))
    deadline = time.monotonic() + 60
    while not all(r.exists() for _, r in readers):
        assert time.monotonic() < deadline, "readers did not start"
        assert all(p.poll() is None for p, _ in readers), "a reader died at start"
        time.sleep(0.02)

    writers = [popen_worker("writer", home, "v", str(per_writer), str(rows), str(k * per_writer * rows)) for k in range(2)]
    try:
        results = [w.communicate(timeout=120) for w in writers]
    finally:
        done.touch()
    for w, (_, w_err) in zip(writers, results, strict=True):
        assert w.returncode == 0, w_err

    valid = {k * rows for k in range(batches + 1)}
    observations, distinct = 0, set()
    for proc, _ in readers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["errors"] == [], report["errors"][0]
        counts = [entry[1] for entry in report["seen"]]
        assert set(counts) <= valid, f"a reader saw a partial batch: {sorted(set(counts) - valid)}"
        for entry in report["seen"]:
            if entry[0] == "training_set":
                assert entry[1] == entry[2] * rows  # non-null features == rows of the batches the set used
        # snapshots only move forward
        sql_counts = [e[1] for e in report["seen"] if e[0] == "sql"]
        assert sql_counts == sorted(sql_counts)
        assert sql_counts[-1] == batches * rows  # the last round ran after the writer finished
        observations += len(counts)
        distinct |= set(counts)
    assert observations >= 6
    assert {0, batches * rows} <= distinct  # readers ran before and after the writer's batches
    assert len(fs.catalog.batches("v", 1)) == batches
    assert not [f for f in files_under(box.paths.features) if TMP_PREFIX in f]


def _big_parquet(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    start = np.datetime64("2025-01-01T00:00:00", "us")
    pq.write_table(
        pa.table(
            {
                "customer_id": np.arange(n, dtype="int64"),
                "ts": pa.array(start + np.arange(n).astype("timedelta64[ms]"), pa.timestamp("us", tz="UTC")),
                "a": rng.integers(0, 1_000_000, n),
            }
        ),
        path,
    )


def test_kill_9_mid_ingest_leaves_catalog_unchanged_and_is_swept(fs: FeatureStore, box: Box, tmp_path: Path) -> None:
    fs.apply([CUSTOMER, VIEW])
    fs.ingest("v", pd.DataFrame({"customer_id": [1, 2], "ts": pd.Timestamp("2024-12-01T00:00:00Z"), "a": [2, 4]}))
    before = ([b.id for b in fs.catalog.batches("v", 1)], fs.snapshot(), files_under(box.paths.features))
    big = tmp_path / "big.parquet"
    _big_parquet(big, 3_000_000)

    proc = popen_worker("ingest", str(box.paths.home), "v", str(big))
    folder = box.paths.features / "v" / "v1"
    tmp_files: list[Path] = []
    deadline = time.monotonic() + 60
    while not tmp_files:
        assert proc.poll() is None, f"the ingest ended before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "no temporary batch file appeared"
        tmp_files = [p for p in folder.glob(f"{TMP_PREFIX}*")]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)  # reap it: a zombie still answers kill(pid, 0)
    assert proc.returncode == -signal.SIGKILL

    # the catalog never heard of it; the orphan is still on disk until someone opens the box
    assert ([b.id for b in fs.catalog.batches("v", 1)], fs.snapshot()) == before[:2]
    orphans = [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert orphans and all(str(proc.pid) in p.name for p in orphans)

    again = open_box(box.paths.home)
    try:
        fs2 = again.features  # opening the feature store sweeps
        assert not [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
        assert files_under(box.paths.features) == before[2]
        assert ([b.id for b in fs2.catalog.batches("v", 1)], fs2.snapshot()) == before[:2]
        assert fs2.sql("SELECT count(*) FROM v")[1] == [(2,)]
        # and a new ingest works
        batch = fs2.ingest("v", pd.DataFrame({"customer_id": [3], "ts": pd.Timestamp("2024-12-02T00:00:00Z"), "a": [6]})).batch
        assert batch.row_count == 1
        assert fs2.sql("SELECT count(*) FROM v")[1] == [(3,)]
    finally:
        again.close()


def test_sweep_removes_uncommitted_batch_files_and_keeps_live_ones(fs: FeatureStore, box: Box) -> None:
    fs.apply([CUSTOMER, VIEW])
    committed = fs.ingest("v", pd.DataFrame({"customer_id": [1], "ts": pd.Timestamp("2025-01-01T00:00:00Z"), "a": [2]})).batch
    folder = box.paths.features / "v" / "v1"
    data = (box.paths.home / committed.path).read_bytes()
    renamed = folder / "0123456789abcdef0123456789abcdef.parquet"  # renamed into place, catalog row never committed
    renamed.write_bytes(data)
    stray_v2 = box.paths.features / "v" / "v2" / "feedfacefeedfacefeedfacefeedface.parquet"
    stray_v2.parent.mkdir()
    stray_v2.write_bytes(data)
    live = folder / f"{TMP_PREFIX}{os.getpid()}-cafebabe.parquet"  # in flight in a live process
    live.write_bytes(data)
    dead = folder / f"{TMP_PREFIX}999999999-deadbeef.parquet"
    dead.write_bytes(data)
    assert fs.sql("SELECT count(*) FROM v")[1] == [(1,)]  # files the catalog does not name are never read

    removed = fs.offline.sweep()
    assert {p.name for p in removed} == {renamed.name, stray_v2.name, dead.name}
    assert not renamed.exists() and not stray_v2.exists() and not dead.exists()
    assert live.exists() and (box.paths.home / committed.path).exists()
    assert fs.sql("SELECT count(*) FROM v")[1] == [(1,)]

    renamed.write_bytes(data)
    again = open_box(box.paths.home)
    try:
        _ = again.features
        assert not renamed.exists() and live.exists()
    finally:
        again.close()
