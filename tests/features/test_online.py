"""Online store: after materialize, lookups equal the offline latest row per entity (ties → later batch)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlbox.errors import NotFound, ValidationError
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.store import FeatureStore

from . import _data as D
from .conftest import online_rows

T0 = pd.Timestamp("2025-01-01T00:00:00Z")


def _ingest_all(fs: FeatureStore, world: D.World, tmp_path: Path, batches: range) -> None:
    for b in batches:
        for i, v in enumerate(D.VIEWS):
            kind = ("pandas", "arrow", "parquet")[(b + i) % 3]
            fs.ingest(v.name, D.source(world.batches[v.name][b], kind, tmp_path, f"{v.name}-{b}"))


def _entity_rows(view: str) -> list[dict[str, Any]]:
    if view == "store_sales":
        return [{"region": r, "store_no": n} for r, n in [*D.STORES, *D.MISSING_STORES]]
    return [{"customer_id": c} for c in [*D.CUSTOMERS, 0, 13, 14]]


def _check_online(fs: FeatureStore, world: D.World) -> None:
    for v in D.VIEWS:
        want = D.latest_per_entity(world, v.name)
        rows = _entity_rows(v.name)
        got = online_rows(fs, [f"{v.name}:*"], rows, with_timestamps=True)
        assert len(got) == len(rows)
        for req, out in zip(rows, got, strict=True):
            key = tuple(req[k] for k in D.KEYS[v.name])
            exp = want.get(key)
            assert {k: out[k] for k in req} == req  # the request's keys come back unchanged
            if exp is None:
                assert all(out[f] is None for f in D.FIELDS[v.name]), (v.name, key, out)
                assert out[f"{v.name}@1:__ts"] is None
                continue
            values = {f: out[f] for f in D.FIELDS[v.name]}
            assert values == {f: exp[f] for f in D.FIELDS[v.name]}, (v.name, key)
            for f in D.FIELDS[v.name]:
                if exp[f] is not None:
                    assert type(values[f]) is type(exp[f]), (v.name, f, values[f])  # bool stays bool, int stays int
            assert pd.Timestamp(out[f"{v.name}@1:__ts"]) == exp[v.timestamp]
        # single-entity lookups (a different SQL path) agree
        for req in rows[:3]:
            one = online_rows(fs, [f"{v.name}:*"], [req])[0]
            exp = want.get(tuple(req[k] for k in D.KEYS[v.name]))
            assert {f: one[f] for f in D.FIELDS[v.name]} == {f: (exp or {}).get(f) for f in D.FIELDS[v.name]}


@pytest.mark.parametrize("seed", [11, 12])
def test_online_equals_offline_latest_then_incremental_then_full(fs: FeatureStore, tmp_path: Path, seed: int) -> None:
    world = D.make_world(seed, n_batches=5)
    fs.apply([D.CUSTOMER, D.STORE, *D.VIEWS])
    _ingest_all(fs, world, tmp_path, range(3))
    partial = D.World({k: v[:3] for k, v in world.batches.items()})

    first = fs.materialize()
    assert {r.mode for r in first} == {"full"} and {r.batches for r in first} == {3}
    _check_online(fs, partial)
    # the online table holds exactly one row per entity
    for v in D.VIEWS:
        assert fs.online.count(fs.view(v.name)) == len(D.latest_per_entity(partial, v.name))

    # two more batches per view: newer values, older values and exact ties, materialized incrementally
    _ingest_all(fs, world, tmp_path, range(3, 5))
    inc = fs.materialize()
    assert {r.mode for r in inc} == {"incremental"} and {r.batches for r in inc} == {2}
    _check_online(fs, world)

    # nothing new: an incremental run reads no batch and changes nothing
    assert {(r.mode, r.batches, r.rows) for r in fs.materialize()} == {("incremental", 0, 0)}
    _check_online(fs, world)

    full = fs.materialize(full=True)
    assert {r.mode for r in full} == {"full"} and {r.batches for r in full} == {5}
    _check_online(fs, world)
    assert [m["mode"] for m in fs.catalog.materializations("cust_profile")] == ["full", "incremental", "incremental", "full"]


def test_incremental_never_replaces_newer_with_older(fs: FeatureStore) -> None:
    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("p", "customer", "ts", (Field("x", "int64"), Field("flag", "bool")))])
    t = [T0 + pd.Timedelta(hours=h) for h in range(4)]
    fs.ingest("p", pd.DataFrame({"customer_id": [1, 2, 3, 4], "ts": [t[2]] * 4, "x": [1, 2, 3, 4], "flag": [True, False, True, False]}))
    fs.materialize("p")
    # a late batch: older for 1, newer for 2, the same instant for 3 (later batch wins), 4 untouched, 5 new
    fs.ingest("p", pd.DataFrame({"customer_id": [1, 2, 3, 5], "ts": [t[0], t[3], t[2], t[1]], "x": [10, 20, 30, 50], "flag": [False, True, False, True]}))
    (res,) = fs.materialize("p")
    assert (res.mode, res.batches) == ("incremental", 1)
    got = online_rows(fs, ["p:x", "p:flag"], [{"customer_id": i} for i in range(1, 7)], with_timestamps=True)
    assert [(g["x"], g["flag"]) for g in got] == [(1, True), (20, True), (30, False), (4, False), (50, True), (None, None)]
    assert [g["p@1:__ts"] for g in got] == [t[2].isoformat(), t[3].isoformat(), t[2].isoformat(), t[2].isoformat(), t[1].isoformat(), None]
    assert all(type(g["flag"]) is bool for g in got[:5])
    # and the offline training set at the latest instant agrees with the online store
    labels = pd.DataFrame({"customer_id": list(range(1, 7)), "ts": [T0 + pd.Timedelta(days=1)] * 6})
    frame = fs.training_set(labels, ["p:x", "p:flag"], timestamp="ts").frame
    assert [None if pd.isna(v) else int(v) for v in frame["x"]] == [g["x"] for g in got]


def test_composite_and_string_keys(fs: FeatureStore) -> None:
    fs.apply([Entity("store", {"region": "string", "store_no": "int32"}), FeatureView("s", "store", "ts", (Field("sales", "float64"), Field("open", "bool")))])
    fs.ingest("s", pd.DataFrame({"region": ["north", "north", "south", "O'Neil"], "store_no": [1, 2, 1, 1], "ts": [T0] * 4, "sales": [1.5, 2.5, 3.5, 4.5], "open": [True, False, True, True]}))
    fs.materialize()
    rows = [{"region": "north", "store_no": 2}, {"region": "south", "store_no": "1"}, {"region": "O'Neil", "store_no": 1}, {"region": "south", "store_no": 2}]
    got = online_rows(fs, ["s:sales", "s:open"], rows)
    assert [(g["sales"], g["open"]) for g in got] == [(2.5, False), (3.5, True), (4.5, True), (None, None)]
    assert got[1]["store_no"] == "1"  # the request row is echoed as given
    assert online_rows(fs, ["s:open"], [{"region": "north", "store_no": 1}]) == [{"region": "north", "store_no": 1, "open": True}]
    with pytest.raises(ValidationError, match="store_no"):
        online_rows(fs, ["s:sales"], [{"region": "north"}])
    with pytest.raises(ValidationError, match="integer"):
        online_rows(fs, ["s:sales"], [{"region": "north", "store_no": "one"}])
    assert online_rows(fs, ["s:sales"], []) == []


def test_many_entities_in_one_lookup(fs: FeatureStore) -> None:
    """More keys than one IN list holds (the reader chunks by 500)."""
    n = 1300
    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("p", "customer", "ts", (Field("x", "int64"),))])
    fs.ingest("p", pd.DataFrame({"customer_id": range(n), "ts": T0, "x": [i * 3 for i in range(n)]}))
    fs.materialize()
    ids = list(range(-5, n + 5)) + [7, 7, -1, 42]  # repeated entities get the same answer each time
    random.Random(3).shuffle(ids)
    got = online_rows(fs, ["p:x"], [{"customer_id": i} for i in ids])
    assert [g["x"] for g in got] == [i * 3 if 0 <= i < n else None for i in ids]


def test_online_uses_the_transformation_output_and_unmaterialized_view_is_not_found(fs: FeatureStore) -> None:
    fs.apply([Entity("customer", {"customer_id": "int64"}), D.USAGE])
    with pytest.raises(NotFound, match="materialize"):
        fs.get_online_features(["cust_usage:calls"], [{"customer_id": 1}])
    fs.ingest("cust_usage", pd.DataFrame({"customer_id": [1, 2], "event_ts": [T0, T0], "calls": [3, 4]}))
    fs.materialize("cust_usage")
    got = online_rows(fs, ["cust_usage:calls_x2", "cust_usage:calls"], [{"customer_id": 1}, {"customer_id": 2}])
    assert [(g["calls"], g["calls_x2"]) for g in got] == [(3, 6), (4, 8)]


def test_online_follows_the_materialized_version(fs: FeatureStore) -> None:
    customer = Entity("customer", {"customer_id": "int64"})
    fs.apply([customer, FeatureView("p", "customer", "ts", (Field("x", "int64"),))])
    fs.ingest("p", pd.DataFrame({"customer_id": [1], "ts": [T0], "x": [1]}))
    fs.materialize()
    fs.apply([customer, FeatureView("p", "customer", "ts", (Field("x", "int64"), Field("y", "int64")))])
    # version 2 exists but is not materialized: reads keep using version 1
    assert online_rows(fs, ["p:x"], [{"customer_id": 1}])[0]["x"] == 1
    fs.ingest("p", pd.DataFrame({"customer_id": [1], "ts": [T0], "x": [2], "y": [3]}))
    fs.materialize()
    import time

    time.sleep(1.05)  # the online plan cache lives one second
    assert online_rows(fs, ["p:x", "p:y"], [{"customer_id": 1}])[0] == {"customer_id": 1, "x": 2, "y": 3}
    assert online_rows(fs, ["p@1:x"], [{"customer_id": 1}])[0]["x"] == 1


def test_every_dtype_offline_and_online(fs: FeatureStore) -> None:
    import datetime as dt

    fields = (Field("i32", "int32"), Field("f32", "float32"), Field("d", "date"), Field("t", "timestamp"), Field("b", "bool"), Field("s", "string"), Field("i64", "int64"), Field("f64", "float64"))
    fs.apply([Entity("thing", {"tid": "string"}), FeatureView("things", "thing", "ts", fields)])
    df = pd.DataFrame(
        {
            "tid": ["a", "b"],
            "ts": pd.to_datetime(["2025-01-01 04:00", "2025-01-01 05:00"]).tz_localize("Asia/Dubai"),
            "i32": pd.array([-7, None], dtype="Int32"),
            "f32": [1.25, None],
            "d": [dt.date(2025, 1, 2), None],
            "t": pd.to_datetime(["2025-01-03T00:00:00Z", None], utc=True),
            "b": pd.array([False, None], dtype="boolean"),
            "s": ["x", None],
            "i64": pd.array([2**60, None], dtype="Int64"),
            "f64": [0.1, None],
        }
    )
    batch = fs.ingest("things", df).batch
    assert batch.min_ts == "2025-01-01T00:00:00+00:00"  # 04:00 in Dubai is midnight UTC
    types = fs.sql("SELECT " + ", ".join(f"typeof({f.name})" for f in fields) + " FROM things LIMIT 1")[1][0]
    assert types == ("INTEGER", "FLOAT", "DATE", "TIMESTAMP WITH TIME ZONE", "BOOLEAN", "VARCHAR", "BIGINT", "DOUBLE")
    fs.materialize()
    a, b = online_rows(fs, ["things:*"], [{"tid": "a"}, {"tid": "b"}])
    assert (a["i32"], a["f32"], a["b"], a["s"], a["i64"], a["f64"]) == (-7, 1.25, False, "x", 2**60, 0.1)
    assert type(a["b"]) is bool and type(a["i64"]) is int
    assert str(a["d"]).startswith("2025-01-02") and pd.Timestamp(a["t"]) == pd.Timestamp("2025-01-03T00:00:00Z")
    assert all(b[f.name] is None for f in fields)
