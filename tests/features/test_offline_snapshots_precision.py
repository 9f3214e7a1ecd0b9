"""Pinned snapshots before a view's data are errors, and sub-microsecond timestamps never leak.

Feature rows are stored at microseconds, rounded UP (a row is never seen before its time);
labels are floored (a label never moves later). Both are tested with nanosecond Parquet
files, timezone-aware and naive, and with nanosecond pandas frames.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbox.errors import ValidationError
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.store import FeatureStore

from .conftest import column

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
T_NS = 1_735_689_600_000_000_000  # T0 in nanoseconds since the epoch
CUSTOMER = Entity("customer", {"customer_id": "int64"})
VIEW = FeatureView("prof", "customer", "ts", (Field("x", "int64"),))


def test_pinning_a_snapshot_before_the_first_batch_is_an_error(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, VIEW])
    before_any = fs.snapshot()
    labels = pd.DataFrame({"customer_id": [1], "ts": [T0]})
    with pytest.raises(ValidationError, match=r"prof@1 has no data at snapshot \d+: no batch is committed yet"):
        fs.training_set(labels, ["prof:x"], snapshot=before_any, timestamp="ts")
    # unpinned, a view not yet ingested reads as nulls (its data may be on its way)
    assert column(fs.training_set(labels, ["prof:x"], timestamp="ts").frame, "x") == [None]

    fs.ingest("prof", pd.DataFrame({"customer_id": [1], "ts": [T0], "x": [10]}))
    first = fs.catalog.batches("prof", 1)[0].commit_seq
    with pytest.raises(ValidationError) as err:
        fs.training_set(labels, ["prof:x"], snapshot=before_any, timestamp="ts")
    assert f"view prof@1 has no data at snapshot {before_any}" in err.value.message
    assert f"its first batch was committed at snapshot {first}" in err.value.message
    assert str(first) in (err.value.hint or "")
    assert column(fs.training_set(labels, ["prof:x"], snapshot=first, timestamp="ts").frame, "x") == [10]


def _ns_parquet(path: Path, ns: list[int], *, tz: str | None, extra: dict[str, list[int]]) -> Path:
    cols = {k: pa.array(v, pa.int64()) for k, v in extra.items()}
    cols["ts"] = pa.array(ns, pa.timestamp("ns", tz=tz))
    pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize("tz", ["UTC", None])
def test_a_feature_row_at_t_plus_900ns_is_not_seen_by_a_label_at_t(fs: FeatureStore, tmp_path: Path, tz: str | None) -> None:
    fs.apply([CUSTOMER, VIEW])
    # entity 1: a row at T+900 ns; 2: exactly at T; 3: at T+400 ns (which rounding to nearest would move to T)
    src = _ns_parquet(
        tmp_path / "f.parquet", [T_NS + 900, T_NS, T_NS + 400], tz=tz, extra={"customer_id": [1, 2, 3], "x": [10, 20, 30]}
    )
    batch = fs.ingest("prof", src).batch
    assert batch.min_ts == "2025-01-01T00:00:00+00:00" and batch.max_ts == "2025-01-01T00:00:00.000001+00:00"
    stored = fs.sql("SELECT customer_id, epoch_us(ts) FROM prof ORDER BY customer_id")[1]
    assert stored == [(1, T_NS // 1000 + 1), (2, T_NS // 1000), (3, T_NS // 1000 + 1)]  # rounded up, never down

    labels = _ns_parquet(
        tmp_path / "l.parquet",
        [T_NS, T_NS + 900, T_NS + 1000, T_NS, T_NS + 999, T_NS + 600],
        tz=tz,
        extra={"customer_id": [1, 1, 1, 2, 2, 3]},
    )
    frame = fs.training_set(str(labels), ["prof:x"], timestamp="ts").frame
    # labels at T, T+900 ns and T+600 ns (floored to T) are earlier than rows stored at T+1 us
    assert column(frame, "x") == [None, None, 10, 20, 20, None]
    assert [t.value for t in frame["ts"]] == [T_NS, T_NS, T_NS + 1000, T_NS, T_NS, T_NS]  # labels floored


def test_nanosecond_pandas_frames_are_rounded_the_same_way(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, VIEW])
    ts = pd.to_datetime(pd.Series([T_NS + 900, T_NS - 900]), unit="ns", utc=True)
    assert ts.dt.unit == "ns"
    fs.ingest("prof", pd.DataFrame({"customer_id": [1, 2], "ts": ts, "x": [10, 20]}))
    stored = fs.sql("SELECT customer_id, epoch_us(ts) FROM prof ORDER BY customer_id")[1]
    assert stored == [(1, T_NS // 1000 + 1), (2, T_NS // 1000)]  # -900 ns rounds up to T, not down to T-1 us
    stamps = pd.to_datetime(pd.Series([T_NS + 999, T_NS + 1000, T_NS - 1]), unit="ns", utc=True)
    labels = pd.DataFrame({"customer_id": [1, 1, 2], "ts": stamps})
    frame = fs.training_set(labels, ["prof:x"], timestamp="ts").frame
    assert column(frame, "x") == [None, 10, None]


def test_csv_timestamps_finer_than_microseconds_are_refused(fs: FeatureStore, tmp_path: Path) -> None:
    fs.apply([CUSTOMER, VIEW])
    path = tmp_path / "f.csv"
    path.write_text("customer_id,ts,x\n1,2025-01-01T00:00:00.000000900Z,10\n2,2025-01-01T00:00:00.100000000Z,20\n")
    with pytest.raises(ValidationError, match="1 timestamp.* finer than the store's microseconds"):
        fs.ingest("prof", path)
    assert fs.catalog.batches("prof", 1) == []
    path.write_text("customer_id,ts,x\n1,2025-01-01T00:00:00.000001000Z,10\n")  # trailing zeros are whole microseconds
    assert fs.ingest("prof", path).batch.min_ts == "2025-01-01T00:00:00.000001+00:00"


def test_text_timestamps_with_nanoseconds_are_rounded_up(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, VIEW])
    fs.ingest("prof", pd.DataFrame({"customer_id": [1], "ts": ["2025-01-01T00:00:00.000000900+00:00"], "x": [10]}))
    assert fs.sql("SELECT epoch_us(ts) FROM prof")[1] == [(T_NS // 1000 + 1,)]
