"""Point-in-time join vs a brute-force oracle on seeded random data (the feature store's core promise)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.store import FeatureStore

from . import _data as D
from .conftest import column

SOURCE_KINDS = ("pandas", "arrow", "parquet")


def _load_world(fs: FeatureStore, world: D.World, tmp_path: Path) -> list[int]:
    """Apply the views and ingest batch b of every view, round by round; return the snapshot after each round."""
    fs.apply([D.CUSTOMER, D.STORE, *D.VIEWS])
    snaps = []
    n = len(next(iter(world.batches.values())))
    for b in range(n):
        for i, v in enumerate(D.VIEWS):
            kind = SOURCE_KINDS[(b + i) % len(SOURCE_KINDS)]
            result = fs.ingest(v.name, D.source(world.batches[v.name][b], kind, tmp_path, f"{v.name}-{b}"))
            assert result.batch.row_count == len(world.batches[v.name][b].rows)
        snaps.append(fs.snapshot())
    return snaps


def _labels_frame(labels: list[dict], ts_format: str) -> pd.DataFrame:
    df = pd.DataFrame(labels)
    ts = pd.to_datetime(df["ts"], utc=True).astype("datetime64[us, UTC]")
    if ts_format == "dubai":
        ts = ts.dt.tz_convert("Asia/Dubai")
    elif ts_format == "string":
        # ISO strings with a +04:00 offset: the join must compare instants, not wall clocks
        ts = ts.dt.tz_convert("Asia/Dubai").map(lambda t: t.isoformat())
    df["ts"] = ts
    df["store_no"] = df["store_no"].astype("int64")
    return df


def _check(frame: pd.DataFrame, labels: list[dict], expected: dict[str, list]) -> None:
    assert list(frame.columns) == ["customer_id", "region", "store_no", "ts", "label", "row", *expected]
    assert column(frame, "row") == list(range(len(labels))), "label row order is not preserved"
    assert column(frame, "customer_id") == [r["customer_id"] for r in labels]
    for name, want in expected.items():
        got = column(frame, name)
        bad = [(i, labels[i]["customer_id"], labels[i]["region"], labels[i]["store_no"], labels[i]["ts"], g, w)
               for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w or type(g) is not type(w)]
        assert not bad, f"{name}: {len(bad)} mismatching rows, first (row, cust, region, store, ts, got, want): {bad[:3]}"


@pytest.mark.parametrize(
    ("seed", "disjoint", "ts_format"),
    [(0, False, "utc"), (1, False, "dubai"), (2, False, "string"), (3, False, "utc"), (4, True, "utc"), (5, True, "dubai")],
)
def test_training_set_matches_bruteforce_oracle(fs: FeatureStore, tmp_path: Path, seed: int, disjoint: bool, ts_format: str) -> None:
    world = D.make_world(seed, disjoint=disjoint)
    snaps = _load_world(fs, world, tmp_path)
    labels = D.make_labels(seed, world)
    frame_labels = _labels_frame(labels, ts_format)
    refs = ["cust_profile:*", "cust_usage:calls", "cust_usage:calls_x2", "store_sales:*"]
    views = ["cust_profile", "cust_usage", "store_sales"]

    ts = fs.training_set(frame_labels, refs, timestamp="ts")
    expected, hits = D.pit_oracle(labels, world, views)
    _check(ts.frame, labels, expected)
    assert ts.label_rows == len(labels)
    assert ts.snapshot == snaps[-1]
    # the data really exercised the edges
    assert hits["exact_ts"] > 0 and hits["exact_ttl_kept"] > 0 and hits["ttl_plus_1us_null"] > 0 and hits["missing"] > 0
    if not disjoint:
        assert hits["tie_later_batch"] > 0

    # pinned to the snapshot after the second round: only the first two batches of each view count
    early = fs.training_set(frame_labels, refs, snapshot=snaps[1], timestamp="ts")
    expected_early, _ = D.pit_oracle(labels, world, views, upto=1)
    _check(early.frame, labels, expected_early)
    assert len(early.batches) == 6 and len(ts.batches) == 12


def test_pit_handcrafted_edges(fs: FeatureStore) -> None:
    """Readable version of the rules: <=, TTL boundary kept, one microsecond more is null, later batch wins ties."""
    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("p", "customer", "ts", (Field("x", "int64"),), ttl="1h")])
    t0 = pd.Timestamp("2025-01-01T00:00:00Z")
    t2 = t0 + pd.Timedelta(hours=2)
    us = pd.Timedelta(microseconds=1)
    fs.ingest("p", pd.DataFrame({"customer_id": [1, 1, 3], "ts": [t0, t2, t0], "x": [1, 2, 30]}))
    fs.ingest("p", pd.DataFrame({"customer_id": [1], "ts": [t2], "x": [20]}))  # same (entity, ts): later batch wins
    cases = [
        (1, t0 - us, None),  # before any feature
        (1, t0, 1),  # label timestamp == feature timestamp
        (1, t0 + pd.Timedelta(hours=1), 1),  # exactly TTL old: kept
        (1, t0 + pd.Timedelta(hours=1) + us, None),  # one microsecond past TTL: null
        (1, t2 - us, None),  # latest row <= label is t0, 2h old: stale, no fallback
        (1, t2, 20),
        (1, t2 + pd.Timedelta(hours=1), 20),
        (1, t2 + pd.Timedelta(hours=1, seconds=1), None),
        (2, t2, None),  # entity never ingested
        (3, t0 + pd.Timedelta(minutes=59), 30),
    ]
    labels = pd.DataFrame({"customer_id": [c[0] for c in cases], "ts": [c[1] for c in cases]})
    frame = fs.training_set(labels, ["p:x"], timestamp="ts").frame
    assert column(frame, "x") == [c[2] for c in cases]
    assert column(frame, "customer_id") == [c[0] for c in cases]


def test_output_names_disambiguate_colliding_fields(fs: FeatureStore) -> None:
    fs.apply(
        [
            Entity("customer", {"customer_id": "int64"}),
            FeatureView("a", "customer", "ts", (Field("x", "int64"), Field("label", "int64"))),
            FeatureView("b", "customer", "ts", (Field("x", "int64"),)),
        ]
    )
    t0 = pd.Timestamp("2025-01-01T00:00:00Z")
    fs.ingest("a", pd.DataFrame({"customer_id": [1], "ts": [t0], "x": [1], "label": [5]}))
    fs.ingest("b", pd.DataFrame({"customer_id": [1], "ts": [t0], "x": [2]}))
    labels = pd.DataFrame({"customer_id": [1], "ts": [t0], "label": [0]})
    ts = fs.training_set(labels, ["a:*", "b:x"], timestamp="ts")
    assert list(ts.frame.columns) == ["customer_id", "ts", "label", "a__x", "a__label", "b__x"]
    assert ts.frame.iloc[0][["label", "a__x", "a__label", "b__x"]].tolist() == [0, 1, 5, 2]
    assert ts.columns == {"a__x": "a@1:x", "a__label": "a@1:label", "b__x": "b@1:x"}


def test_large_label_set_keeps_order(fs: FeatureStore) -> None:
    """Hundreds of thousands of labels span many DuckDB row groups: order and values must still line up."""
    import numpy as np

    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("p", "customer", "ts", (Field("x", "int64"),))])
    t0 = pd.Timestamp("2025-01-01T00:00:00Z")
    fs.ingest("p", pd.DataFrame({"customer_id": np.arange(500), "ts": t0, "x": np.arange(500) * 10}))
    rng = np.random.default_rng(7)
    n = 300_000
    ids = rng.integers(0, 600, n)
    labels = pd.DataFrame({"customer_id": ids, "ts": t0 + pd.to_timedelta(rng.integers(-5, 100, n), unit="s"), "row": np.arange(n)})
    a = fs.training_set(labels, ["p:x"], timestamp="ts")
    b = fs.training_set(labels, ["p:x"], timestamp="ts")
    assert a.fingerprint == b.fingerprint
    assert (a.frame["row"].to_numpy() == np.arange(n)).all()
    want = np.where((ids < 500) & (labels["ts"] >= t0).to_numpy(), ids * 10, -1)
    got = a.frame["x"].fillna(-1).to_numpy()
    assert (got == want).all()


def test_pit_before_1970_with_overlapping_batches(fs: FeatureStore) -> None:
    """Event times before the epoch are valid data; the tie-break ordering must not break on negative epochs."""
    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("p", "customer", "ts", (Field("x", "int64"),))])
    t = pd.Timestamp("1969-06-01T00:00:00Z")
    fs.ingest("p", pd.DataFrame({"customer_id": [1, 2], "ts": [t, t + pd.Timedelta(days=1)], "x": [1, 2]}))
    fs.ingest("p", pd.DataFrame({"customer_id": [1], "ts": [t], "x": [10]}))  # overlaps the first batch: tie-break path
    labels = pd.DataFrame({"customer_id": [1, 2, 1], "ts": [t + pd.Timedelta(days=2), t + pd.Timedelta(days=2), t - pd.Timedelta(seconds=1)]})
    frame = fs.training_set(labels, ["p:x"], timestamp="ts").frame
    assert column(frame, "x") == [10, 2, None]


def test_labels_with_null_or_mistyped_keys(fs: FeatureStore) -> None:
    from mlbox.errors import ValidationError

    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("p", "customer", "ts", (Field("x", "int64"),))])
    t0 = pd.Timestamp("2025-01-01T00:00:00Z")
    fs.ingest("p", pd.DataFrame({"customer_id": [1], "ts": [t0], "x": [1]}))
    labels = pd.DataFrame({"customer_id": pd.array([1, None], dtype="Int64"), "ts": [t0, t0]})
    assert column(fs.training_set(labels, ["p:x"], timestamp="ts").frame, "x") == [1, None]
    as_text = pd.DataFrame({"customer_id": ["1", "2"], "ts": [t0, t0]})
    assert column(fs.training_set(as_text, ["p:x"], timestamp="ts").frame, "x") == [1, None]
    with pytest.raises(ValidationError):
        fs.training_set(pd.DataFrame({"customer_id": ["abc"], "ts": [t0]}), ["p:x"], timestamp="ts")
    with pytest.raises(ValidationError, match="join key"):
        fs.training_set(pd.DataFrame({"cid": [1], "ts": [t0]}), ["p:x"], timestamp="ts")
    with pytest.raises(ValidationError, match="timestamp"):
        fs.training_set(pd.DataFrame({"customer_id": [1], "ts": ["not a time"]}), ["p:x"], timestamp="ts")
    # the one timestamp column is found without being named
    assert column(fs.training_set(labels, ["p:x"]).frame, "x") == [1, None]
