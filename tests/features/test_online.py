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


NOW = D.BASE + D.GRID * D.STEP  # the clock of these tests: some rows are within each TTL, some older


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlbox.clock.now", lambda: NOW.to_pydatetime())


def _check_online(fs: FeatureStore, world: D.World) -> None:
    for v in D.VIEWS:
        want = D.latest_per_entity(world, v.name)
        ttl = D.TTL[v.name]
        rows = _entity_rows(v.name)
        got = online_rows(fs, [f"{v.name}:*"], rows, with_timestamps=True)
        assert len(got) == len(rows)
        for req, out in zip(rows, got, strict=True):
            key = tuple(req[k] for k in D.KEYS[v.name])
            exp = want.get(key)
            assert {k: out[k] for k in req} == req  # the request's keys come back unchanged
            if exp is None:
                assert all(out[f] is None for f in D.FIELDS[v.name]), (v.name, key, out)
                assert out[f"{v.name}@1:__ts"] is None and out[f"{v.name}@1:__status"] == "missing"
                continue
            assert pd.Timestamp(out[f"{v.name}@1:__ts"]) == exp[v.timestamp]
            if ttl is not None and exp[v.timestamp] < NOW - ttl:  # older than the TTL: null, and said so
                assert all(out[f] is None for f in D.FIELDS[v.name]), (v.name, key, out)
                assert out[f"{v.name}@1:__status"] == "expired"
                continue
            assert out[f"{v.name}@1:__status"] == "ok"
            values = {f: out[f] for f in D.FIELDS[v.name]}
            assert values == {f: exp[f] for f in D.FIELDS[v.name]}, (v.name, key)
            for f in D.FIELDS[v.name]:
                if exp[f] is not None:
                    assert type(values[f]) is type(exp[f]), (v.name, f, values[f])  # bool stays bool, int stays int
        # single-entity lookups (a different SQL path) agree
        for req in rows:
            one = online_rows(fs, [f"{v.name}:*"], [req])[0]
            many = online_rows(fs, [f"{v.name}:*"], rows)[rows.index(req)]
            assert one == many


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


def test_many_entity_rows_with_odd_keys_are_judged_one_by_one(fs: FeatureStore) -> None:
    """Plain in-range ints take the fast path; anything else in a multi-row lookup gets `coerce_key`'s verdict."""
    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("p", "customer", "ts", (Field("x", "int64"),))])
    fs.ingest("p", pd.DataFrame({"customer_id": range(5), "ts": T0, "x": [10, 11, 12, 13, 14]}))
    fs.materialize()
    assert [g["x"] for g in online_rows(fs, ["p:x"], [{"customer_id": 1}, {"customer_id": "3"}, {"customer_id": 4.0}])] == [11, 13, 14]
    # rows with different keys: each column has a value per row (None where a row lacks it)
    got = fs.get_online_features(["p:x"], [{"customer_id": 1, "tag": "a"}, {"customer_id": 2}])
    assert got == {"customer_id": [1, 2], "tag": ["a", None], "x": [11, 12]}
    for bad, match in ((True, "integer"), (2**63, "int64 range"), (-(2**63) - 1, "int64 range"), (1.5, "integer")):
        with pytest.raises(ValidationError, match=match):
            online_rows(fs, ["p:x"], [{"customer_id": 1}, {"customer_id": bad}])
    with pytest.raises(ValidationError, match="lacks join key 'customer_id'"):
        online_rows(fs, ["p:x"], [{"customer_id": 1}, {"other": 2}])


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
    # timestamps and dates come back as the canonical number a model encodes: seconds since the epoch (a date: its midnight UTC)
    assert (a["d"], a["t"]) == (pd.Timestamp("2025-01-02T00:00:00Z").timestamp(), pd.Timestamp("2025-01-03T00:00:00Z").timestamp())
    assert type(a["d"]) is float and type(a["t"]) is float
    (native,) = online_rows(fs, ["things:d", "things:t"], [{"tid": "a"}], native=True)
    assert native["d"] == dt.date(2025, 1, 2) and native["t"] == dt.datetime(2025, 1, 3, tzinfo=dt.UTC)
    assert all(b[f.name] is None for f in fields)


def test_ttl_online_equals_the_training_set_at_the_same_instant(fs: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a fixed clock, online values equal a training set with every label at that instant, TTL edges included."""
    now = pd.Timestamp("2026-06-01T12:00:00Z")
    monkeypatch.setattr("mlbox.clock.now", lambda: now.to_pydatetime())
    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("p", "customer", "ts", (Field("x", "int64"), Field("s", "string")), ttl="1h")])
    hour, us = pd.Timedelta(hours=1), pd.Timedelta(microseconds=1)
    stamps = [now - hour, now - hour - us, now, now - pd.Timedelta(days=30), now - hour + us]
    fs.ingest("p", pd.DataFrame({"customer_id": [1, 2, 3, 4, 5], "ts": stamps, "x": [10, 20, 30, 40, 50], "s": list("abcde")}))
    fs.materialize("p")
    ids = [1, 2, 3, 4, 5, 6]
    got = fs.get_online_features(["p:x", "p:s"], [{"customer_id": i} for i in ids], with_timestamps=True)
    assert got["x"] == [10, None, 30, None, 50, None] and got["s"] == ["a", None, "c", None, "e", None]
    assert got["p@1:__status"] == ["ok", "expired", "ok", "expired", "ok", "missing"]
    assert [None if t is None else pd.Timestamp(t) for t in got["p@1:__ts"]] == [*stamps, None]
    frame = fs.training_set(pd.DataFrame({"customer_id": ids, "ts": [now] * len(ids)}), ["p:x", "p:s"], timestamp="ts").frame
    assert [None if pd.isna(v) else int(v) for v in frame["x"]] == got["x"]
    assert [None if pd.isna(v) else v for v in frame["s"]] == got["s"]
    # one entity at a time (the single-row path) agrees
    for i, x in zip(ids, got["x"], strict=True):
        assert fs.get_online_features(["p:x"], [{"customer_id": i}])["x"] == [x]
    # the clock moves on: the exact-TTL row expires one microsecond later
    monkeypatch.setattr("mlbox.clock.now", lambda: (now + us).to_pydatetime())
    assert fs.get_online_features(["p:x"], [{"customer_id": 1}], with_timestamps=True)["p@1:__status"] == ["expired"]


def test_materialize_keeps_every_version_a_training_set_used_fresh(fs: FeatureStore) -> None:
    customer = Entity("customer", {"customer_id": "int64"})
    fs.apply([customer, FeatureView("p", "customer", "ts", (Field("x", "int64"),))])
    fs.ingest("p", pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0], "x": [1, 2]}))
    labels = pd.DataFrame({"customer_id": [1, 2], "ts": [T0 + pd.Timedelta(days=1)] * 2})
    fs.training_set(labels, ["p:x"], timestamp="ts")  # a model trained on p@1, never materialized
    fs.apply([customer, FeatureView("p", "customer", "ts", (Field("x", "int64"), Field("y", "int64")))])
    assert {r.view for r in fs.materialize()} == {"p@1", "p@2"}
    fs.ingest("p", pd.DataFrame({"customer_id": [1], "ts": [T0 + pd.Timedelta(hours=1)], "x": [11], "y": [5]}))
    fs.ingest("p@1", pd.DataFrame({"customer_id": [2], "ts": [T0 + pd.Timedelta(hours=1)], "x": [22]}))
    results = {r.view: (r.mode, r.batches) for r in fs.materialize()}
    assert results == {"p@1": ("incremental", 1), "p@2": ("incremental", 1)}
    assert fs.get_online_features(["p@1:x"], [{"customer_id": 1}, {"customer_id": 2}])["x"] == [1, 22]
    assert fs.get_online_features(["p@2:x", "p@2:y"], [{"customer_id": 1}]) == {"customer_id": [1], "x": [11], "y": [5]}
    # naming the view refreshes its versions in use too; NAME@N only that one
    assert {r.view for r in fs.materialize("p")} == {"p@1", "p@2"}
    assert [r.view for r in fs.materialize("p@1")] == ["p@1"]
    # a view nobody used keeps only its latest version refreshed
    fs.apply([customer, FeatureView("q", "customer", "ts", (Field("a", "int64"),))])
    fs.apply([customer, FeatureView("q", "customer", "ts", (Field("a", "int64"), Field("b", "int64")))])
    assert {r.view for r in fs.materialize("q")} == {"q@2"}


def test_answer_columns_come_in_the_order_asked(fs: FeatureStore) -> None:
    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("p", "customer", "ts", (Field("i", "int64"), Field("s", "string"), Field("f", "float64"), Field("b", "bool")))])
    fs.ingest("p", pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0], "i": [1, 2], "s": ["a", "b"], "f": [0.5, 1.5], "b": [True, False]}))
    fs.materialize("p")
    for refs in (["p:b", "p:f", "p:i"], ["p:s", "p:b", "p:i", "p:f"], ["p:*"]):
        for rows in ([{"customer_id": 1}], [{"customer_id": 1}, {"customer_id": 2}]):
            got = fs.get_online_features(refs, rows)
            names = ["i", "s", "f", "b"] if refs == ["p:*"] else [r.split(":")[1] for r in refs]
            assert list(got) == ["customer_id", *names]
            assert got["i" if "i" in got else "b"][0] == (1 if "i" in got else True)
            if "f" in got:
                assert got["f"][:1] == [0.5]
    # numbers only: single reads take the struct path, whose blob is in dtype-block order (float64, int64, ..., bool)
    fs.apply([Entity("customer", {"customer_id": "int64"}), FeatureView("n", "customer", "ts", (Field("i", "int64"), Field("b", "bool"), Field("f", "float64")))])
    fs.ingest("n", pd.DataFrame({"customer_id": [1], "ts": [T0], "i": [7], "b": [True], "f": [0.25]}))
    fs.materialize("n")
    assert fs.get_online_features(["n:*"], [{"customer_id": 1}]) == {"customer_id": [1], "i": [7], "b": [True], "f": [0.25]}
    assert list(fs.get_online_features(["n:*"], [{"customer_id": 1}])) == ["customer_id", "i", "b", "f"]
