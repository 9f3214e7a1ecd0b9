"""Training-set fingerprints: a SHA-256 over canonical label content and join parameters.

Same content gives the same digest whatever form the labels come in; any change to one
label value, the label order, a batch or a TTL changes it; and golden values pin the
recipe, so an engine upgrade that changed how labels are read or encoded is caught.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbox.features import fingerprint as fp
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.offline import connect
from mlbox.features.store import FeatureStore
from mlbox.features.training import register_labels

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})


def view(ttl: str = "30d") -> FeatureView:
    return FeatureView("prof", "customer", "ts", (Field("x", "int64"),), ttl=ttl)


def labels() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 1],
            "ts": [T0 + pd.Timedelta(days=d) for d in (1, 1, 2, 5)],
            "y": [0.5, 1.0, None, 2.0],
            "note": ["a", "b", None, "déjà"],
        }
    )


@pytest.fixture
def prof(fs: FeatureStore) -> FeatureStore:
    fs.apply([CUSTOMER, view()])
    fs.ingest("prof", pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0], "x": [10, 20]}))
    return fs


def fingerprint_of(fs: FeatureStore, frame: object, **kw: object) -> str:
    return fs.training_set(frame, ["prof:x"], timestamp="ts", **kw).fingerprint


def test_same_content_in_any_form_gives_the_same_fingerprint(prof: FeatureStore, tmp_path: Path) -> None:
    frame = labels()
    path = tmp_path / "labels.parquet"
    frame.to_parquet(path, index=False)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=1))  # other chunking, same rows
    prints = {fingerprint_of(prof, x) for x in (frame, str(path), table, chunked, labels())}
    assert len(prints) == 1
    assert len(prints.pop()) == 64


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f.assign(y=[0.5, 1.0, None, 2.0000001]),  # one float value
        lambda f: f.assign(note=["a", "b", None, "deja"]),  # one string value
        lambda f: f.assign(note=["a", "b", "", "déjà"]),  # a null becomes an empty string
        lambda f: f.assign(ts=[T0 + pd.Timedelta(days=d) for d in (1, 1, 2, 5)][:3] + [T0 + pd.Timedelta(days=5, microseconds=1)]),
        lambda f: f.iloc[[1, 0, 2, 3]].reset_index(drop=True),  # label order
        lambda f: f.iloc[:3],  # one row fewer
        lambda f: f.rename(columns={"note": "comment"}),  # a column name
    ],
)
def test_any_change_of_the_labels_changes_the_fingerprint(prof: FeatureStore, change: object) -> None:
    assert fingerprint_of(prof, change(labels())) != fingerprint_of(prof, labels())  # type: ignore[operator]


def test_a_new_batch_or_ttl_changes_it_and_a_pinned_snapshot_keeps_it(prof: FeatureStore) -> None:
    snap = prof.snapshot()
    before = fingerprint_of(prof, labels())
    prof.ingest("prof", pd.DataFrame({"customer_id": [3], "ts": [T0], "x": [30]}))
    after_batch = fingerprint_of(prof, labels())
    assert after_batch != before
    assert fingerprint_of(prof, labels(), snapshot=snap) == before  # same batches at the pinned snapshot
    prof.apply([CUSTOMER, view(ttl="2d")])
    after_ttl = fingerprint_of(prof, labels())
    assert after_ttl not in (before, after_batch)


def test_the_fingerprint_covers_the_batch_sha256(prof: FeatureStore) -> None:
    """Two boxes with the same labels and batch ids but different batch bytes differ."""
    plan_batches = prof.catalog.batches("prof", 1)
    assert len(plan_batches) == 1 and len(plan_batches[0].sha256) == 64
    base = labels_table()
    params = {"views": [{"view": "prof@1", "batches": [[1, plan_batches[0].sha256]]}]}
    other = {"views": [{"view": "prof@1", "batches": [[1, "0" * 64]]}]}
    assert fp.digest(base, params) != fp.digest(base, other)


def labels_table() -> pa.Table:
    return pa.table(
        {
            "customer_id": pa.array([1, 2, None], pa.int64()),
            "ts": pa.array([1735689600000000, 1735689600000001, 1735776000000000], pa.timestamp("us", tz="UTC")),
            "y": pa.array([0.25, float("nan"), None], pa.float64()),
            "flag": pa.array([True, None, False]),
            "name": pa.array(["a", "", None]),
            "day": pa.array([20089, None, 0], pa.date32()),
        }
    )


GOLDEN_TABLE = "5c9b73de45160671f487485a8bfd6373bea7403501aa58bf5e28004456012b1c"
GOLDEN_READ = {
    "l.parquet": "a939811905c859a53a6d31fe1850a8d41a0009e5fc86574cb20eeda76bc20a64",
    "l.csv": "59c18ad8257cae30452807e8a7d596207aeb1c06c06000250ee753cefefefebf",
}


def test_golden_digest_of_a_fixed_table() -> None:
    """The recipe itself: a fixed Arrow table and parameters always hash to this value."""
    assert fp.digest(labels_table(), {"k": [1, "a"]}) == GOLDEN_TABLE


def test_golden_digest_of_labels_read_by_duckdb(tmp_path: Path) -> None:
    """Labels read from Parquet and CSV by the engine: a DuckDB upgrade that changed the values
    it reads, their types or their order would change this value."""
    pq.write_table(labels_table().drop_columns(["day"]), tmp_path / "l.parquet")
    (tmp_path / "l.csv").write_text(
        "customer_id,ts,y,flag,name\n1,2025-01-01T00:00:00Z,0.25,true,a\n2,2025-01-01T00:00:00.000001Z,,,\n,2025-01-02 00:00:00+00,,false,x\n"
    )
    got = {}
    for name in ("l.parquet", "l.csv"):
        con = connect(threads=2)
        try:
            lab = register_labels(con, name, "ts", tmp_path)
            table = con.sql("SELECT * EXCLUDE (__row) FROM __labels ORDER BY __row").to_arrow_table()
        finally:
            con.close()
        assert lab.timestamp == "ts" and lab.rows == table.num_rows == 3
        got[name] = fp.digest(table, {})
    assert got == GOLDEN_READ


def test_nan_payloads_and_negative_zero_are_canonical() -> None:
    a = pa.table({"y": pa.array([float("nan"), 0.0])})
    b = pa.table({"y": pa.array([-float("nan"), -0.0])})
    assert fp.digest(a, {}) == fp.digest(b, {})


def test_fingerprint_of_a_million_labels_is_fast() -> None:
    import time

    n = 1_000_000
    table = pa.table(
        {
            "customer_id": pa.array(range(n), pa.int64()),
            "ts": pa.array(range(n), pa.timestamp("us", tz="UTC")),
            "label": pa.array([i % 2 for i in range(n)], pa.int64()),
        }
    )
    start = time.perf_counter()
    digest = fp.digest(table, {})
    took = time.perf_counter() - start
    assert digest == fp.digest(table, {})
    assert took < 1.0, took  # about 20 ms: whole buffers, not rows


def test_recipe_is_the_documented_byte_stream() -> None:
    """docs/features.md's recipe, re-implemented byte by byte for an int64 and a string column."""
    import hashlib
    import json
    import struct

    table = pa.table({"id": pa.array([7, None], pa.int64()), "s": pa.array(["hé", None])})
    params = {"views": []}
    h = hashlib.sha256()
    h.update(b"mlbox-training-set/1\n")
    h.update(json.dumps(params, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    h.update(b"[2, 2]\n")
    h.update(b'["id", "int64", 2]\n' + b"\x00" + bytes([0b01]) + struct.pack("<qq", 7, 0))
    h.update(b'["s", "string", 2]\n' + b"\x00" + bytes([0b01]) + struct.pack("<qq", 3, 0) + "hé".encode())
    assert fp.digest(table, params) == h.hexdigest()
