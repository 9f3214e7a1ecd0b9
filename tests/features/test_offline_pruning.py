"""Batch and row pruning by stored time ranges never changes a training set, and does prune.

Compares the pruned join with the same join over every committed batch, on data built so
each pruning rule fires: a batch wholly older than the first label minus the TTL (it could
only supply expired values, and it shadows nothing), one starting after the last label, and
batches straddling the labels' range, which get row filters instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas.testing import assert_frame_equal

from mlbox.features import training
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.pit import build_query
from mlbox.features.store import FeatureStore

T0 = pd.Timestamp("2025-06-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})


def _rows(ids: range, start: pd.Timestamp, hours: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(ids) * hours
    return pd.DataFrame(
        {
            "customer_id": np.repeat(np.array(ids), hours),
            "ts": [start + pd.Timedelta(hours=h) for h in range(hours)] * len(ids),
            "x": rng.integers(0, 1000, size=n),
        }
    )


def test_pruning_keeps_the_frame_and_skips_batches(fs: FeatureStore, tmp_path: Path) -> None:
    fs.apply([CUSTOMER, FeatureView("p", "customer", "ts", (Field("x", "int64"),), ttl="3h")])
    fs.ingest("p", _rows(range(20), T0 - pd.Timedelta(days=5), 24, 1))  # ends days before the labels
    fs.ingest("p", _rows(range(20), T0 - pd.Timedelta(hours=6), 12, 2))  # straddles the first label
    fs.ingest("p", _rows(range(0, 20, 2), T0 - pd.Timedelta(hours=1), 4, 3))  # overlaps: later batch wins ties
    fs.ingest("p", _rows(range(20), T0 + pd.Timedelta(days=3), 5, 4))  # starts after the last label
    rng = np.random.default_rng(9)
    labels = pd.DataFrame(
        {
            "customer_id": rng.integers(0, 25, size=400),  # a few entities never ingested
            "ts": [T0 + pd.Timedelta(minutes=int(m)) for m in rng.integers(0, 8 * 60, size=400)],
        }
    )
    path = tmp_path / "labels.parquet"
    labels.to_parquet(path, index=False)

    got = fs.training_set(str(path), ["p:x"], timestamp="ts")
    assert got.frame["x"].notna().sum() > 50 and got.frame["x"].isna().sum() > 50  # both kinds of rows occur
    assert len(got.batches) == 4  # lineage and fingerprint still name every committed batch

    con = fs.offline.connect()
    try:
        lab = training.register_labels(con, str(path), "ts", Path.cwd())
        snap = fs.snapshot()
        pruned = training.resolve(fs.catalog, fs.offline, ["p:x"], snap, lab.columns, lab.timestamp, lab.span)
        full = training.resolve(fs.catalog, fs.offline, ["p:x"], snap, lab.columns, lab.timestamp, None)
        (view,) = pruned.spec.views
        assert len(view.files) == 2 and len(full.spec.views[0].files) == 4  # the oldest and the future batch are skipped
        assert view.tie_break and view.since is not None and view.until is None  # a straddling batch gets a row filter
        a = con.sql(build_query(pruned.spec)).df()
        b = con.sql(build_query(full.spec)).df()
    finally:
        con.close()
    assert_frame_equal(a, b)
    assert_frame_equal(got.frame, b)
