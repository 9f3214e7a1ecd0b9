"""Push: rows online at once, offline at the next micro-batch, validated like ingest, equal online and offline."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from mlbox.errors import UsageError, ValidationError
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.store import FeatureStore

from . import _data as D

NOW = pd.Timestamp("2026-06-01T12:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})
VIEW = FeatureView(
    "live",
    "customer",
    "ts",
    (Field("clicks", "int64"), Field("score", "float32"), Field("seen", "timestamp"), Field("day", "date"), Field("ok", "bool"), Field("tag", "string")),
    ttl="1d",
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The frozen clock of these tests; `clock.move(td)` moves it."""

    class Clock:
        now = NOW

        def move(self, delta: pd.Timedelta) -> None:
            self.now = self.now + delta

    c = Clock()
    monkeypatch.setattr("mlbox.clock.now", lambda: c.now.to_pydatetime())
    return c


def _row(cid: Any, when: pd.Timestamp, clicks: Any, **extra: Any) -> dict[str, Any]:
    row = {"customer_id": cid, "ts": when.isoformat(), "clicks": clicks, "score": 0.5, "seen": "2026-05-30T08:00:00+00:00",
           "day": "2026-05-30", "ok": True, "tag": f"t{clicks}"}  # fmt: skip
    return {**row, **extra}


def _offline_rows(fs: FeatureStore) -> int:
    return int(fs.sql("SELECT count(*) FROM live")[1][0][0])


def test_push_is_online_at_once_and_offline_after_the_micro_batch(fs: FeatureStore, clock: Any) -> None:
    fs.apply([CUSTOMER, VIEW])
    result = fs.push("live", [_row(1, NOW - pd.Timedelta(minutes=5), 7), _row(2, NOW, 8, ok=None, tag=None)], actor="alice")
    assert result == {"view": "live@1", "rows": 2, "online": True, "staged": 2, "flushed_batch": None, "notes": []}
    got = fs.get_online_features(["live:*"], [{"customer_id": 1}, {"customer_id": 2}, {"customer_id": 3}], with_timestamps=True)
    assert got["clicks"] == [7, 8, None] and got["ok"] == [True, None, None] and got["tag"] == ["t7", None, None]
    assert got["score"] == [0.5, 0.5, None] and got["day"][0] == pd.Timestamp("2026-05-30T00:00:00Z").timestamp()
    assert got["live@1:__status"] == ["ok", "ok", "missing"]
    assert _offline_rows(fs) == 0 and [p["rows"] for p in fs.pending_pushes()] == [2]  # staged, not a batch yet
    assert fs.db.scalar("SELECT count(*) FROM audit WHERE action = 'features.push'") == 1

    # a training set at a later instant flushes first and sees exactly what was served
    labels = pd.DataFrame({"customer_id": [1, 2, 3], "ts": [NOW + pd.Timedelta(minutes=1)] * 3})
    frame = fs.training_set(labels, ["live:*"], timestamp="ts").frame
    assert fs.pending_pushes() == [] and _offline_rows(fs) == 2 and len(fs.catalog.batches("live", 1)) == 1
    assert [None if pd.isna(v) else int(v) for v in frame["clicks"]] == got["clicks"]
    assert [None if pd.isna(v) else v for v in frame["tag"]] == got["tag"]
    assert frame["seen"].iloc[0] == pd.Timestamp("2026-05-30T08:00:00Z")

    # the next materialize (full here) rebuilds from batches and keeps the pushed values
    (res,) = fs.materialize("live", full=True)
    assert res.rows == 2
    assert fs.get_online_features(["live:clicks"], [{"customer_id": 1}, {"customer_id": 2}])["clicks"] == [7, 8]


def test_flush_rule_rows_and_seconds(make_box: Any, clock: Any) -> None:
    fs = make_box(toml="[features]\npush_flush_rows = 3\npush_flush_seconds = 30\n").features
    fs.apply([CUSTOMER, VIEW])
    assert fs.push("live", [_row(1, NOW, 1), _row(2, NOW, 2)], actor="a")["flushed_batch"] is None
    third = fs.push("live", [_row(3, NOW, 3)], actor="a")  # 3 staged rows: this push flushes them
    assert third["flushed_batch"] is not None and third["staged"] == 0 and _offline_rows(fs) == 3
    assert fs.push("live", [_row(4, NOW, 4)], actor="a")["flushed_batch"] is None
    clock.move(pd.Timedelta(seconds=31))  # the oldest staged row is now older than push_flush_seconds
    assert fs.push("live", [_row(5, NOW, 5)], actor="a")["flushed_batch"] is not None
    assert _offline_rows(fs) == 5 and fs.flush() == []


def test_newer_wins_and_a_tie_goes_to_the_later_push_online_and_offline(fs: FeatureStore, clock: Any) -> None:
    fs.apply([CUSTOMER, VIEW])
    t = NOW - pd.Timedelta(hours=1)
    fs.push("live", [_row(1, t, 1)], actor="a")
    fs.push("live", [_row(1, t - pd.Timedelta(minutes=1), 2)], actor="a")  # older: not served
    assert fs.get_online_features(["live:clicks"], [{"customer_id": 1}])["clicks"] == [1]
    fs.push("live", [_row(1, t, 3)], actor="a")  # same instant, later push: served
    assert fs.get_online_features(["live:clicks"], [{"customer_id": 1}])["clicks"] == [3]
    assert fs.flush() == [{"view": "live@1", "rows": 3, "batch": 1}]
    frame = fs.training_set(pd.DataFrame({"customer_id": [1], "ts": [NOW]}), ["live:clicks"], timestamp="ts").frame
    assert frame["clicks"].tolist() == [3]  # the offline batch kept the later push, as the online store did


def test_push_accepts_frames_and_arrow_tables(fs: FeatureStore, clock: Any) -> None:
    fs.apply([CUSTOMER, VIEW])
    frame = pd.DataFrame([_row(1, NOW, 1), _row(2, NOW, 2)])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["seen"] = pd.to_datetime(frame["seen"], utc=True)
    frame["day"] = [dt.date(2026, 5, 30)] * 2
    assert fs.push("live", frame, actor="a")["rows"] == 2
    assert fs.push("live", pa.Table.from_pandas(frame.assign(clicks=[10, 20], ts=frame["ts"] + pd.Timedelta(seconds=1))), actor="a")["rows"] == 2
    assert fs.get_online_features(["live:clicks"], [{"customer_id": 1}, {"customer_id": 2}])["clicks"] == [10, 20]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([_row(1, NOW, "many")], "column 'clicks' has 1 row(s) with a value that is not int64"),
        ([_row(1, NOW, 1, extra=1)], "rows[1] has other columns than rows[0]: adds extra"),
        ([{k: v for k, v in _row(1, NOW, 1).items() if k != "tag"}], "rows[1] has other columns than rows[0]: lacks tag"),
        ([_row(1, NOW, 1, customer_id=None)], "column 'customer_id' has 1 row(s) with a null"),
        ([_row(1, NOW, 1, ts=None)], "column 'ts' has 1 row(s) with a null"),
        ([_row(1, NOW, 1, ts="yesterday")], "not a timestamp"),
        ([_row(1, NOW, 1), _row(1, NOW, 2)], "appear more than once"),
        ([_row(1, NOW, 1), _row(2, NOW, [1])], "column 'clicks' has 1 row(s) with a value that is not int64"),
        ([], "no rows"),
        (["not an object"], "rows[0] must be an object"),
    ],
)
def test_bad_rows_are_refused_whole_with_a_clear_error(fs: FeatureStore, clock: Any, rows: list[Any], message: str) -> None:
    fs.apply([CUSTOMER, VIEW])
    good = _row(9, NOW, 9)
    with pytest.raises(ValidationError) as err:
        fs.push("live", [good, *rows] if rows and isinstance(rows[0], dict) else rows, actor="a")
    assert message in str(err.value)
    assert fs.pending_pushes() == [] and fs.online.count(fs.view("live")) == 0  # nothing staged, nothing served


def test_a_whole_table_of_other_columns_is_refused(fs: FeatureStore, clock: Any) -> None:
    fs.apply([CUSTOMER, VIEW])
    with pytest.raises(ValidationError, match=r"missing column\(s\) tag; extra column\(s\) label"):
        fs.push("live", [{**{k: v for k, v in _row(1, NOW, 1).items() if k != "tag"}, "label": 1}], actor="a")


def test_naive_timestamps_follow_the_setting_and_transformed_views_refuse_pushes(make_box: Any, clock: Any) -> None:
    fs = make_box(toml='[features]\nnaive_timestamps = "reject"\n').features
    fs.apply([CUSTOMER, VIEW, D.USAGE])
    with pytest.raises(ValidationError, match="no timezone"):
        fs.push("live", [_row(1, NOW, 1, ts="2026-06-01T10:00:00")], actor="a")
    with pytest.raises(UsageError, match="transformation"):
        fs.push("cust_usage", [{"customer_id": 1, "event_ts": NOW.isoformat(), "calls": 1, "calls_x2": 2}], actor="a")


def test_a_failed_flush_loses_nothing(fs: FeatureStore, clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fs.apply([CUSTOMER, VIEW])
    fs.push("live", [_row(1, NOW, 1), _row(2, NOW, 2)], actor="a")
    original = fs.catalog.db.execute

    def failing(sql: str, params: Any = ()) -> Any:
        if sql.startswith("DELETE FROM feature_push_rows"):
            raise OSError("disk went away")  # after the batch's commit row is written, before unstaging
        return original(sql, params)

    monkeypatch.setattr(fs.catalog.db, "execute", failing)
    with pytest.raises(OSError):
        fs.flush()
    monkeypatch.setattr(fs.catalog.db, "execute", original)
    # the whole flush rolled back: rows still staged, no batch, no duplicate on the retry
    assert [p["rows"] for p in fs.pending_pushes()] == [2] and fs.catalog.batches("live", 1) == []
    assert [f["rows"] for f in fs.flush()] == [2] and _offline_rows(fs) == 2 and fs.pending_pushes() == []


REBUILD_LOOP = """
import sys
from mlbox.box import Box
from mlbox.config import load_settings
box = Box(load_settings(sys.argv[1], environ={}))
print("start", flush=True)
for _ in range(4):
    box.features.materialize("burst", full=True)
box.close()
"""


def test_pushes_during_full_rebuilds_in_another_process_are_never_lost(tmp_path: Any) -> None:
    """Pushes racing full rebuilds in another process stay online (a rebuild flushes staged pushes under its
    write lock first) and reach the offline store exactly once."""
    import os
    import subprocess
    import sys

    import numpy as np

    from .conftest import open_box

    home = tmp_path / "box"
    home.mkdir()
    box = open_box(home)
    fs = box.features
    fs.apply([CUSTOMER, FeatureView("burst", "customer", "ts", (Field("clicks", "int64"), Field("a", "float64")))])
    ids = np.arange(100_000, 160_000)
    fs.ingest("burst", pd.DataFrame({"customer_id": ids, "ts": NOW, "clicks": 1, "a": ids * 0.5}))
    fs.materialize("burst")
    proc = subprocess.Popen([sys.executable, "-c", REBUILD_LOOP, str(home)], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
    pushed = []
    while proc.poll() is None:
        cid = len(pushed) + 1
        fs.push("burst", [{"customer_id": cid, "ts": NOW.isoformat(), "clicks": cid, "a": 0.0}], actor="a")
        pushed.append(cid)
    assert proc.wait() == 0 and len(pushed) > 5
    proc.stdout.close()
    got = fs.get_online_features(["burst:clicks"], [{"customer_id": c} for c in pushed])["clicks"]
    assert got == pushed  # every pushed row is online after the rebuilds
    fs.flush()
    assert fs.sql("SELECT count(*) FROM burst WHERE customer_id < 100000")[1][0][0] == len(pushed)  # and offline, once
    box.close()


def test_push_reads_csv_and_parquet_files(fs: FeatureStore, clock: Any, tmp_path: Any) -> None:
    fs.apply([CUSTOMER, VIEW])
    frame = pd.DataFrame([_row(1, NOW, 1), _row(2, NOW, 2)])
    frame.to_csv(tmp_path / "rows.csv", index=False)
    assert fs.push("live", str(tmp_path / "rows.csv"), actor="a")["rows"] == 2
    frame.assign(clicks=[5, 6], ts=(NOW + pd.Timedelta(seconds=1)).isoformat()).to_parquet(tmp_path / "rows.parquet")
    assert fs.push("live", str(tmp_path / "rows.parquet"), actor="a")["rows"] == 2
    assert fs.get_online_features(["live:clicks"], [{"customer_id": 1}, {"customer_id": 2}])["clicks"] == [5, 6]
