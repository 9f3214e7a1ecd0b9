"""Lineage (sources → batches → training sets) and the read-only SQL surface."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlbox.box import Box
from mlbox.errors import NotFound, UsageError
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.store import FeatureStore

from .conftest import files_under

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})


def _setup(fs: FeatureStore, tmp_path: Path) -> tuple[list[int], list[int], Path]:
    fs.apply([CUSTOMER, FeatureView("a", "customer", "ts", (Field("x", "int64"),)), FeatureView("b", "customer", "ts", (Field("y", "int64"),))])
    src = tmp_path / "a1.csv"
    pd.DataFrame({"customer_id": [1, 2], "ts": ["2025-01-01T00:00:00Z"] * 2, "x": [1, 2]}).to_csv(src, index=False)
    a = [fs.ingest("a", src).batch.id, fs.ingest("a", pd.DataFrame({"customer_id": [1], "ts": [T0 + pd.Timedelta(days=1)], "x": [3]})).batch.id]
    b = [fs.ingest("b", pd.DataFrame({"customer_id": [1], "ts": [T0], "y": [5]})).batch.id]
    return a, b, src


def test_lineage_lists_batches_with_sources_and_training_sets(fs: FeatureStore, tmp_path: Path) -> None:
    (a1, a2), (b1,), src = _setup(fs, tmp_path)
    labels = pd.DataFrame({"customer_id": [1, 2], "ts": [T0 + pd.Timedelta(days=2)] * 2})
    only_a = fs.training_set(labels, ["a:x"], snapshot=fs.snapshot() - 1, timestamp="ts")  # before b's batch: a1, a2
    both = fs.training_set(labels, ["a:x", "b:y"], timestamp="ts")
    only_b = fs.training_set(labels, ["b:y"], timestamp="ts")
    assert only_a.batches == [a1, a2] and both.batches == sorted([a1, a2, b1]) and only_b.batches == [b1]

    info = fs.lineage("a")
    assert info["view"] == "a"
    (v1,) = info["versions"]
    assert [(b["id"], b["source"], b["rows"]) for b in v1["batches"]] == [(a1, str(src.resolve()), 2), (a2, "DataFrame (1 rows)", 1)]
    assert all(len(b["sha256"]) == 64 for b in v1["batches"])
    assert {s["fingerprint"] for s in info["training_sets"]} == {only_a.fingerprint, both.fingerprint}
    assert {s["fingerprint"]: s["snapshot"] for s in info["training_sets"]}[only_a.fingerprint] == only_a.snapshot
    assert {s["fingerprint"] for s in fs.lineage("b")["training_sets"]} == {both.fingerprint, only_b.fingerprint}

    for ts in (only_a, both, only_b):
        rec = fs.catalog.training_set(ts.fingerprint)
        assert rec["batches"] == ts.batches
        assert rec["features"] == ts.features and rec["snapshot"] == ts.snapshot and rec["label_rows"] == 2
    # the batch ids in lineage are the files the catalog committed
    assert {b.id for b in fs.catalog.batches("a", 1)} == {a1, a2}
    with pytest.raises(NotFound):
        fs.catalog.training_set("0" * 64)
    with pytest.raises(NotFound):
        fs.lineage("ghost")


def test_lineage_spans_versions(fs: FeatureStore, tmp_path: Path) -> None:
    (a1, a2), _, _ = _setup(fs, tmp_path)
    fs.apply([CUSTOMER, FeatureView("a", "customer", "ts", (Field("x", "int64"), Field("z", "string")))])
    a3 = fs.ingest("a", pd.DataFrame({"customer_id": [1], "ts": [T0], "x": [1], "z": ["q"]})).batch.id
    info = fs.lineage("a")
    assert [(v["version"], [b["id"] for b in v["batches"]]) for v in info["versions"]] == [(1, [a1, a2]), (2, [a3])]


REFUSED = [
    "COPY (SELECT 1) TO '{home}/out.csv'",
    "COPY a TO '{home}/out.csv'",
    "INSERT INTO a VALUES (1, now(), 1)",
    "ATTACH '{home}/meta.db' AS meta",
    "ATTACH '{home}/new.duckdb' AS x",
    "CREATE TABLE t AS SELECT 1",
    "DROP VIEW a",
    "SET enable_external_access = true",
    "PRAGMA version",
    "SELECT 1; SELECT 2",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_text('{home}/features/../mlbox.toml')",
    "SELECT * FROM read_blob('{home}/keys/audit.key')",
    "SELECT * FROM glob('{home}/**')",
    "SELECT * FROM sqlite_scan('{home}/meta.db', 'users')",
    "SELECT * FROM read_csv('{home}/data.csv')",
]


def test_sql_refuses_writes_and_outside_files(fs: FeatureStore, box: Box, tmp_path: Path) -> None:
    _setup(fs, tmp_path)
    home = box.paths.home
    (home / "mlbox.toml").write_text("")
    (home / "data.csv").write_text("a\n1\n")
    before = files_under(home)
    accepted = []
    for query in REFUSED:
        try:
            fs.sql(query.format(home=home))
        except UsageError:
            pass
        else:
            accepted.append(query)
    assert not accepted, f"fs.sql accepted: {accepted}"
    assert files_under(home) - before <= {"meta.db-wal", "meta.db-shm"}
    assert not (home / "out.csv").exists() and not (home / "new.duckdb").exists()
    assert fs.sql("SELECT count(*) FROM a")[1] == [(3,)]


def test_sql_reads_views_at_a_snapshot(fs: FeatureStore, tmp_path: Path) -> None:
    _setup(fs, tmp_path)
    cols, rows = fs.sql("SELECT customer_id, x FROM a ORDER BY ts, customer_id")
    assert cols == ["customer_id", "x"] and rows == [(1, 1), (2, 2), (1, 3)]
    snap = fs.snapshot()
    fs.ingest("a", pd.DataFrame({"customer_id": [9], "ts": [T0], "x": [9]}))
    assert fs.sql("SELECT count(*) FROM a", snapshot=snap)[1] == [(3,)]
    assert fs.sql("SELECT count(*) FROM a")[1] == [(4,)]
    assert fs.sql("SELECT count(*) FROM a_v1 JOIN b USING (customer_id)")[1] == [(2,)]
    # a view without batches is an empty, typed relation
    fs.apply([CUSTOMER, FeatureView("empty", "customer", "ts", (Field("e", "float64"),))])
    assert fs.sql("SELECT count(*), typeof(any_value(e)) FROM empty")[1][0][0] == 0
    with pytest.raises(UsageError, match="query failed"):
        fs.sql("SELECT * FROM no_such_view")


def test_sql_at_a_snapshot_sees_the_versions_of_that_snapshot(fs: FeatureStore, tmp_path: Path) -> None:
    """Reading at snapshot S sees exactly the versions committed by S: `a` is still version 1 there."""
    _setup(fs, tmp_path)
    snap = fs.snapshot()
    fs.apply([CUSTOMER, FeatureView("a", "customer", "ts", (Field("x", "int64"), Field("w", "int64"))), FeatureView("b", "customer", "ts", (Field("y", "int64"),))])
    fs.ingest("a", pd.DataFrame({"customer_id": [7], "ts": [T0], "x": [7], "w": [7]}))
    assert fs.sql("SELECT count(*) FROM a")[1] == [(1,)]  # now: version 2
    assert fs.sql("SELECT count(*) FROM a_v1", snapshot=snap)[1] == [(3,)]
    # pinned before version 2 existed, the plain name must mean version 1, as a training set at that snapshot does
    labels = pd.DataFrame({"customer_id": [1], "ts": [T0 + pd.Timedelta(days=5)]})
    assert fs.training_set(labels, ["a:x"], snapshot=snap, timestamp="ts").features == ["a@1:x"]
    assert fs.sql("SELECT count(*) FROM a", snapshot=snap)[1] == [(3,)]
