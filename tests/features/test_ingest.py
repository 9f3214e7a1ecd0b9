"""Ingest: every kind of bad input is refused with a message naming the problem, and nothing is written."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbox.box import Box
from mlbox.errors import UsageError, ValidationError
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.store import FeatureStore

from .conftest import files_under

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})
PROF = FeatureView("prof", "customer", "ts", (Field("a", "int64"), Field("s", "string"), Field("f", "float64"), Field("b", "bool")))


def good(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": list(range(1, n + 1)),
            "ts": [T0 + pd.Timedelta(hours=i) for i in range(n)],
            "a": list(range(n)),
            "s": [f"s{i}" for i in range(n)],
            "f": [i / 2 for i in range(n)],
            "b": [i % 2 == 0 for i in range(n)],
        }
    )


@pytest.fixture
def prof(fs: FeatureStore, box: Box) -> FeatureStore:
    fs.apply([CUSTOMER, PROF])
    fs.ingest("prof", good())  # one committed batch, so "nothing written" is checked against a non-empty state
    return fs


def assert_refused(fs: FeatureStore, box: Box, exc: type[Exception], pattern: str, ingest: Callable[[], Any]) -> str:
    """Run a bad ingest: it must raise `exc` matching `pattern` and leave catalog, snapshot and files as they were."""
    batches = [b.id for v in fs.catalog.versions() for b in fs.catalog.batches(v.name, v.version)]
    snap, files = fs.snapshot(), files_under(box.paths.features)
    with pytest.raises(exc, match=pattern) as info:
        ingest()
    assert [b.id for v in fs.catalog.versions() for b in fs.catalog.batches(v.name, v.version)] == batches
    assert fs.snapshot() == snap
    assert files_under(box.paths.features) == files, "a refused ingest left files under features/"
    return str(info.value)


def test_missing_column(prof: FeatureStore, box: Box) -> None:
    msg = assert_refused(prof, box, ValidationError, "missing column", lambda: prof.ingest("prof", good().drop(columns=["s"])))
    assert "s" in msg.split("missing column(s)")[1]


def test_missing_timestamp_and_key_columns(prof: FeatureStore, box: Box) -> None:
    assert_refused(prof, box, ValidationError, r"missing column\(s\) ts", lambda: prof.ingest("prof", good().drop(columns=["ts"])))
    assert_refused(prof, box, ValidationError, r"missing column\(s\) customer_id", lambda: prof.ingest("prof", good().drop(columns=["customer_id"])))


def test_extra_column(prof: FeatureStore, box: Box) -> None:
    assert_refused(prof, box, ValidationError, r"extra column\(s\) surprise", lambda: prof.ingest("prof", good().assign(surprise=1)))


def test_uncastable_string_in_int_field(prof: FeatureStore, box: Box) -> None:
    df = good().astype({"a": object})
    df.loc[1, "a"] = "abc"
    msg = assert_refused(prof, box, ValidationError, r"column 'a' has 1 row\(s\) with a value that is not int64", lambda: prof.ingest("prof", df))
    assert "'abc'" in msg and "row 2" in msg


def test_fractional_float_in_int_field(prof: FeatureStore, box: Box) -> None:
    df = good().astype({"a": float})
    df.loc[2, "a"] = 1.5
    assert_refused(prof, box, ValidationError, r"column 'a' .* not int64", lambda: prof.ingest("prof", df))


def test_integral_floats_in_int_field_are_accepted(prof: FeatureStore) -> None:
    prof.ingest("prof", good().astype({"a": float}).assign(ts=T0 + pd.Timedelta(days=1)))
    assert prof.sql("SELECT any_value(typeof(a)), sum(a) FROM prof WHERE ts > '2025-01-01T12:00:00Z'")[1] == [("BIGINT", 3)]


def test_fractional_number_as_text_in_int_field(prof: FeatureStore, box: Box) -> None:
    """'1.5' as text (a CSV column that also holds other text, a pandas object column) must not become 2."""
    df = good().astype({"a": str})
    df.loc[1, "a"] = "1.5"
    assert_refused(prof, box, ValidationError, r"column 'a' .* not int64", lambda: prof.ingest("prof", df))


def test_fractional_number_in_csv_int_field(prof: FeatureStore, box: Box, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("customer_id,ts,a,s,f,b\n1,2025-02-01T00:00:00Z,1,x,0.5,true\n2,2025-02-01T00:00:00Z,1.5,y,0.5,false\n")
    assert_refused(prof, box, ValidationError, r"column 'a' .* not int64", lambda: prof.ingest("prof", path))


def test_uncastable_bool_and_timestamp(prof: FeatureStore, box: Box) -> None:
    df = good().astype({"b": object})
    df.loc[0, "b"] = "maybe"
    assert_refused(prof, box, ValidationError, r"column 'b' .* not bool", lambda: prof.ingest("prof", df))
    df = good().astype({"ts": object})
    df["ts"] = ["2025-01-01T00:00:00Z", "not a time", "2025-01-01T02:00:00Z"]
    assert_refused(prof, box, ValidationError, r"column 'ts' .* not a timestamp", lambda: prof.ingest("prof", df))


def test_null_entity_key(prof: FeatureStore, box: Box) -> None:
    df = good().astype({"customer_id": "Int64"})
    df.loc[1, "customer_id"] = None
    assert_refused(prof, box, ValidationError, r"column 'customer_id' has 1 row\(s\) with a null", lambda: prof.ingest("prof", df))


def test_null_timestamp(prof: FeatureStore, box: Box) -> None:
    df = good()
    df.loc[0, "ts"] = pd.NaT
    assert_refused(prof, box, ValidationError, r"column 'ts' has 1 row\(s\) with a null", lambda: prof.ingest("prof", df))


def test_null_feature_values_are_fine(prof: FeatureStore) -> None:
    df = good().astype({"a": "Int64"}).assign(ts=T0 + pd.Timedelta(days=2))
    df.loc[0, "a"] = None
    df.loc[1, "s"] = None
    prof.ingest("prof", df)
    batch = prof.catalog.batches("prof", 1)[-1]
    assert batch.stats["fields"]["a"]["nulls"] == 1 and batch.stats["fields"]["s"]["nulls"] == 1


NAIVE = pd.DataFrame({"customer_id": [1, 2], "ts": pd.to_datetime(["2025-01-05 00:00", "2025-01-05 01:00"]), "a": [1, 2], "s": ["x", "y"], "f": [0.0, 1.0], "b": [True, False]})


def test_naive_timestamps_rejected_by_env_setting(make_box: Callable[..., Box]) -> None:
    b = make_box(environ={"MLBOX_FEATURES_NAIVE_TIMESTAMPS": "reject"})
    b.features.apply([CUSTOMER, PROF])
    msg = assert_refused(b.features, b, ValidationError, "no timezone", lambda: b.features.ingest("prof", NAIVE))
    assert "'ts'" in msg and "2 timestamp(s)" in msg
    # text timestamps without an offset are naive too
    text = NAIVE.assign(ts=["2025-01-05T00:00:00", "2025-01-05T01:00:00Z"])
    assert_refused(b.features, b, ValidationError, r"1 timestamp\(s\) .* no timezone", lambda: b.features.ingest("prof", text))
    b.features.ingest("prof", NAIVE.assign(ts=NAIVE["ts"].dt.tz_localize("UTC")))


def test_naive_timestamps_rejected_by_mlbox_toml(make_box: Callable[..., Box], tmp_path: Path) -> None:
    b = make_box(toml='[features]\nnaive_timestamps = "reject"\n')
    b.features.apply([CUSTOMER, PROF])
    path = tmp_path / "naive.csv"
    NAIVE.to_csv(path, index=False)
    assert_refused(b.features, b, ValidationError, "no timezone", lambda: b.features.ingest("prof", path))


def test_naive_timestamps_rejected_in_a_csv_that_mixes_offsets_and_naive(make_box: Callable[..., Box], tmp_path: Path) -> None:
    """DuckDB's CSV sniffer types a column mixing '…Z' and naive values as TIMESTAMPTZ; the naive ones must still count."""
    b = make_box(environ={"MLBOX_FEATURES_NAIVE_TIMESTAMPS": "reject"})
    b.features.apply([CUSTOMER, PROF])
    path = tmp_path / "mixed.csv"
    path.write_text("customer_id,ts,a,s,f,b\n1,2025-01-05T00:00:00Z,1,x,0.5,true\n2,2025-01-05T00:00:00,2,y,0.5,false\n")
    assert_refused(b.features, b, ValidationError, "no timezone", lambda: b.features.ingest("prof", path))


def test_naive_timestamps_read_as_utc_by_default(prof: FeatureStore) -> None:
    result = prof.ingest("prof", NAIVE)
    assert any("UTC" in n for n in result.notes)
    assert result.batch.min_ts == "2025-01-05T00:00:00+00:00"


def test_offsets_are_normalised_to_utc(prof: FeatureStore) -> None:
    df = good(2).assign(ts=["2025-01-07T04:00:00+04:00", "2025-01-07T00:00:00-05:00"])
    batch = prof.ingest("prof", df).batch
    assert (batch.min_ts, batch.max_ts) == ("2025-01-07T00:00:00+00:00", "2025-01-07T05:00:00+00:00")


def test_duplicates_rejected_by_default(prof: FeatureStore, box: Box) -> None:
    df = pd.concat([good(), good().iloc[[1]]], ignore_index=True)
    msg = assert_refused(prof, box, ValidationError, "more than once", lambda: prof.ingest("prof", df))
    assert "1 (entity, timestamp) pair" in msg and "keep-last" in msg
    # the same instant written with a different offset is the same (entity, timestamp)
    two = good(1).assign(ts=["2025-01-01T00:00:00Z"])
    two = pd.concat([two, two.assign(ts=["2025-01-01T04:00:00+04:00"], a=[9])], ignore_index=True)
    assert_refused(prof, box, ValidationError, "more than once", lambda: prof.ingest("prof", two))


def test_duplicates_keep_last(prof: FeatureStore) -> None:
    t = T0 + pd.Timedelta(days=3)
    df = pd.DataFrame({"customer_id": [7, 7, 8, 7], "ts": [t, t, t, t], "a": [1, 2, 3, 4], "s": ["p", "q", "r", "last"], "f": [0.0] * 4, "b": [True] * 4})
    result = prof.ingest("prof", df, duplicate_policy="keep-last")
    assert result.batch.row_count == 2
    assert any("2 duplicate" in n for n in result.notes)
    assert prof.sql("SELECT customer_id, a, s FROM prof WHERE ts = '2025-01-04T00:00:00Z' ORDER BY 1")[1] == [(7, 4, "last"), (8, 3, "r")]


def test_duplicates_keep_last_from_setting(make_box: Callable[..., Box]) -> None:
    b = make_box(environ={"MLBOX_FEATURES_DUPLICATE_POLICY": "keep-last"})
    b.features.apply([CUSTOMER, PROF])
    df = pd.concat([good(), good().assign(a=[10, 11, 12])], ignore_index=True)
    assert b.features.ingest("prof", df).batch.row_count == 3
    assert b.features.sql("SELECT a FROM prof ORDER BY customer_id")[1] == [(10,), (11,), (12,)]
    with pytest.raises(UsageError, match="duplicate policy"):
        b.features.ingest("prof", good(), duplicate_policy="first")


def test_empty_sources(prof: FeatureStore, box: Box, tmp_path: Path) -> None:
    assert_refused(prof, box, ValidationError, "no rows", lambda: prof.ingest("prof", good().iloc[0:0]))
    path = tmp_path / "empty.csv"
    path.write_text("customer_id,ts,a,s,f,b\n")
    assert_refused(prof, box, ValidationError, "no rows", lambda: prof.ingest("prof", path))
    assert_refused(prof, box, UsageError, "not found", lambda: prof.ingest("prof", tmp_path / "nope.csv"))
    assert_refused(prof, box, UsageError, "cannot", lambda: prof.ingest("prof", {"customer_id": [1]}))
    (tmp_path / "x.json").write_text("{}")
    assert_refused(prof, box, UsageError, "json", lambda: prof.ingest("prof", tmp_path / "x.json"))


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet", "pandas", "arrow"])
def test_every_source_kind(fs: FeatureStore, tmp_path: Path, kind: str) -> None:
    fs.apply([CUSTOMER, PROF])
    df = good(4)
    src: Any
    if kind == "csv":
        src = tmp_path / "s.csv"
        df.assign(ts=df["ts"].map(lambda t: t.isoformat())).to_csv(src, index=False)
    elif kind == "csv.gz":
        src = tmp_path / "s.csv.gz"
        with gzip.open(src, "wt") as fh:
            df.assign(ts=df["ts"].map(lambda t: t.isoformat())).to_csv(fh, index=False)
    elif kind == "parquet":
        src = tmp_path / "s.parquet"
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), src)
    elif kind == "pandas":
        src = df
    else:
        src = pa.Table.from_pandas(df, preserve_index=False)
    result = fs.ingest("prof", src)
    assert result.batch.row_count == 4
    if kind not in ("pandas", "arrow"):
        assert result.batch.source == str(Path(src).resolve())
    cols, rows = fs.sql("SELECT customer_id, ts, a, s, f, b FROM prof ORDER BY customer_id")
    assert [(r[0], r[2], r[3], r[4], r[5]) for r in rows] == [(i + 1, i, f"s{i}", i / 2, i % 2 == 0) for i in range(4)]
    assert [r[1] for r in rows] == [t.to_pydatetime() for t in df["ts"]]
    assert fs.sql("SELECT typeof(customer_id), typeof(ts), typeof(a), typeof(s), typeof(f), typeof(b) FROM prof LIMIT 1")[1] == [
        ("BIGINT", "TIMESTAMP WITH TIME ZONE", "BIGINT", "VARCHAR", "DOUBLE", "BOOLEAN")
    ]


def test_relative_path_source_and_default_source(fs: FeatureStore, box: Box, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = box.paths.home / "data"
    data.mkdir()
    good(2).to_csv(data / "p.csv", index=False)
    fs.apply([CUSTOMER, FeatureView("prof", "customer", "ts", PROF.fields, source="data/p.csv")])
    monkeypatch.chdir(tmp_path)  # the default source is relative to the box, not the working directory
    assert fs.ingest("prof").batch.source == str(data / "p.csv")
    fs.apply([CUSTOMER, FeatureView("prof2", "customer", "ts", PROF.fields)])
    with pytest.raises(UsageError, match="declares no source"):
        fs.ingest("prof2")


def test_transformation_computes_derived_column(fs: FeatureStore) -> None:
    view = FeatureView(
        "usage",
        "customer",
        "event_ts",
        (Field("calls", "int64"), Field("tickets", "int64"), Field("per_call", "float64")),
        transformation="SELECT customer_id, event_ts, calls, tickets, tickets / greatest(calls, 1)::DOUBLE AS per_call FROM source",
    )
    fs.apply([CUSTOMER, view])
    src = pd.DataFrame({"customer_id": [1, 2, 3], "event_ts": [T0] * 3, "calls": [4, 0, 10], "tickets": [1, 3, 5]})
    fs.ingest("usage", src)
    assert fs.sql("SELECT customer_id, per_call FROM usage ORDER BY 1")[1] == [(1, 0.25), (2, 3.0), (3, 0.5)]
    # the source must match what the transformation reads, its output what the view declares
    with pytest.raises(ValidationError, match="transformation"):
        fs.ingest("usage", src.drop(columns=["tickets"]))
    with pytest.raises(ValidationError, match="extra column"):
        fs.apply([CUSTOMER, FeatureView("u2", "customer", "event_ts", (Field("calls", "int64"),), transformation="SELECT *, 1 AS one FROM source")])
        fs.ingest("u2", src.drop(columns=["tickets"]))


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT 1) TO '/tmp/mlbox-should-not-exist.csv'",
        "CREATE TABLE t AS SELECT * FROM source",
        "SELECT * FROM source; SELECT 1",
        "INSERT INTO source VALUES (1)",
        "ATTACH '/tmp/x.db' AS x",
    ],
)
def test_transformation_that_is_not_a_select_is_refused(fs: FeatureStore, box: Box, sql: str) -> None:
    fs.apply([CUSTOMER, PROF])
    bad = FeatureView("bad", "customer", "ts", PROF.fields, transformation=sql)
    try:
        fs.apply([CUSTOMER, bad])
    except UsageError as exc:  # refusing at apply time is fine
        assert "SELECT" in str(exc)
        return
    assert_refused(fs, box, UsageError, "must be a single SELECT", lambda: fs.ingest("bad", good()))
    assert not Path("/tmp/mlbox-should-not-exist.csv").exists()
    assert not Path("/tmp/x.db").exists()


def test_ingest_of_unknown_view(fs: FeatureStore) -> None:
    from mlbox.errors import NotFound

    with pytest.raises(NotFound, match="no feature view 'ghost'"):
        fs.ingest("ghost", good())


def test_out_of_range_and_non_timestamp_columns(prof: FeatureStore, box: Box) -> None:
    view = FeatureView("small", "customer", "ts", (Field("n", "int32"),))
    prof.apply([CUSTOMER, view])
    big = pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0], "n": [1, 2**40]})
    assert_refused(prof, box, ValidationError, r"column 'n' .* not int32", lambda: prof.ingest("small", big))
    epoch = pd.DataFrame({"customer_id": [1], "ts": [1735689600], "n": [1]})
    assert_refused(prof, box, ValidationError, "not a timestamp", lambda: prof.ingest("small", epoch))


def test_ingest_into_an_older_version(prof: FeatureStore) -> None:
    prof.apply([CUSTOMER, FeatureView("prof", "customer", "ts", (*PROF.fields, Field("z", "int64")))])
    batch = prof.ingest("prof@1", good().assign(ts=T0 + pd.Timedelta(days=9))).batch
    assert (batch.view, batch.version) == ("prof", 1)
    assert prof.sql("SELECT count(*) FROM prof_v1")[1] == [(6,)] and prof.sql("SELECT count(*) FROM prof")[1] == [(0,)]
    with pytest.raises(ValidationError, match="missing column"):
        prof.ingest("prof", good())  # version 2 wants z
