"""`mlbox features ...` end to end through the real console script, on an `mlbox init`-ed box."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from pandas.testing import assert_frame_equal

from mlbox.box import Box
from mlbox.config import load_settings
from tests.conftest import run_mlbox


def _ok(args: list[str], cwd: Path) -> str:
    proc = run_mlbox(args, cwd=cwd)
    assert proc.returncode == 0, f"mlbox {' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def _one_error_line(proc) -> str:  # type: ignore[no-untyped-def]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def test_cli_features_end_to_end(tmp_path: Path) -> None:
    box = tmp_path / "proj"
    _ok(["init", str(box)], tmp_path)
    home = ["--home", str(box)]
    applied = json.loads(_ok([*home, "--json", "features", "apply"], tmp_path))
    assert {(c["kind"], c["name"], c["action"]) for c in applied} == {
        ("entity", "customer", "create"),
        ("view", "customer_profile", "create"),
        ("view", "usage", "create"),
    }
    profile = json.loads(_ok([*home, "--json", "features", "ingest", "customer_profile"], tmp_path))
    customers = pd.read_csv(box / "data" / "customers.csv")
    assert profile["row_count"] == len(customers) and profile["source"] == str(box / "data" / "customers.csv")
    usage = json.loads(_ok([*home, "--json", "features", "ingest", "usage"], tmp_path))
    assert usage["row_count"] == len(pd.read_csv(box / "data" / "usage.csv"))

    out = tmp_path / "out" / "train.parquet"
    ts = json.loads(
        _ok(
            [*home, "--json", "features", "training-set", str(box / "data" / "labels.csv"),
             "-F", "customer_profile:age,customer_profile:plan", "-F", "usage:*", "--out", str(out), "--timestamp", "event_ts"],
            tmp_path,
        )
    )  # fmt: skip
    labels = pd.read_csv(box / "data" / "labels.csv")
    frame = pd.read_parquet(out)
    assert ts["rows"] == len(labels) == len(frame)
    assert ts["batches"] == sorted([profile["id"], usage["id"]])
    assert list(frame.columns) == [*labels.columns, "age", "plan", "calls", "data_gb", "support_tickets", "late_payments", "tickets_per_call"]
    assert frame["customer_id"].tolist() == labels["customer_id"].tolist()
    assert frame["age"].notna().mean() > 0.5 and frame["tickets_per_call"].notna().mean() > 0.5

    # the same training set built in-process at the same snapshot: same fingerprint, same frame
    with Box(load_settings(box, environ={})) as b:
        same = b.features.training_set(str(box / "data" / "labels.csv"), ["customer_profile:age", "customer_profile:plan", "usage:*"],
                                       snapshot=ts["snapshot"], timestamp="event_ts")  # fmt: skip
        assert same.fingerprint == ts["fingerprint"]
        assert_frame_equal(same.frame.reset_index(drop=True), frame, check_dtype=False)
        assert b.features.catalog.training_set(ts["fingerprint"])["batches"] == ts["batches"]

    materialized = json.loads(_ok([*home, "--json", "features", "materialize"], tmp_path))
    assert {(m["view"], m["mode"]) for m in materialized} == {("customer_profile@1", "full"), ("usage@1", "full")}

    got = json.loads(_ok([*home, "--json", "features", "get", "customer_profile:*", "usage:calls", "--entity", "customer_id=1001", "--entity", "customer_id=424242"], tmp_path))
    if isinstance(got, dict):  # column-wise answer
        got = [{k: v[i] for k, v in got.items()} for i in range(2)]
    latest = customers.assign(updated_at=pd.to_datetime(customers["updated_at"], utc=True))
    latest = latest[latest["customer_id"] == 1001].sort_values("updated_at").iloc[-1]
    first = got[0]
    assert pd.Timestamp(first["customer_profile@1:__ts"]) == latest["updated_at"]
    # `mlbox init` dated the template's data to this week: the newest profile is within the view's TTL (400 days)
    assert pd.Timestamp.now(tz="UTC") - latest["updated_at"] < pd.Timedelta(days=400)
    assert first["customer_profile@1:__status"] == "ok" and (first["age"], first["plan"]) == (latest["age"], latest["plan"])
    assert got[1]["age"] is None and got[1]["calls"] is None and got[1]["customer_profile@1:__status"] == "missing"

    # a fresh value pushed through the CLI is served at once, then flushed into an offline batch; a value
    # older than the TTL (a new customer, 500 days ago) is null online, and said so
    now = pd.Timestamp.now(tz="UTC").floor("s")
    pushed = {**{k: (v.item() if hasattr(v, "item") else v) for k, v in latest.items()}, "updated_at": now.isoformat(), "age": 50}
    stale = {**pushed, "customer_id": 777777, "updated_at": (now - pd.Timedelta(days=500)).isoformat()}
    (tmp_path / "push.json").write_text(json.dumps([pushed, stale]))
    result = json.loads(_ok([*home, "--json", "features", "push", "customer_profile", str(tmp_path / "push.json")], tmp_path))
    assert (result["view"], result["rows"], result["staged"]) == ("customer_profile@1", 2, 2)
    (old,) = json.loads(_ok([*home, "--json", "features", "get", "customer_profile:*", "--entity", "customer_id=777777"], tmp_path))
    assert old["customer_profile@1:__status"] == "expired" and old["age"] is None and old["plan"] is None
    text = _ok([*home, "features", "get", "customer_profile:age", "--entity", "customer_id=777777"], tmp_path)
    assert "expired" in text and "TTL" in text
    (got,) = json.loads(_ok([*home, "--json", "features", "get", "customer_profile:*", "--entity", "customer_id=1001"], tmp_path))
    assert (got["age"], got["plan"], got["customer_profile@1:__status"]) == (50, latest["plan"], "ok")
    assert got["monthly_charges"] == float(latest["monthly_charges"]) and pd.Timestamp(got["customer_profile@1:__ts"]) == now
    flushed = json.loads(_ok([*home, "--json", "features", "flush"], tmp_path))
    assert [(f["view"], f["rows"]) for f in flushed] == [("customer_profile@1", 2)]
    rows = json.loads(_ok([*home, "--json", "features", "sql", "SELECT age FROM customer_profile WHERE customer_id = 1001 ORDER BY updated_at DESC LIMIT 1"], tmp_path))
    assert rows == [{"age": 50}]
    (tmp_path / "bad.json").write_text(json.dumps([{**pushed, "age": "old"}]))
    proc = run_mlbox([*home, "features", "push", "customer_profile", str(tmp_path / "bad.json")], cwd=tmp_path)
    assert proc.returncode == 2 and "'age'" in _one_error_line(proc) and "int64" in _one_error_line(proc)

    lineage = json.loads(_ok([*home, "--json", "features", "lineage", "usage"], tmp_path))
    assert [b["id"] for b in lineage["versions"][0]["batches"]] == [usage["id"]]
    assert lineage["versions"][0]["batches"][0]["source"] == str(box / "data" / "usage.csv")
    assert [s["fingerprint"] for s in lineage["training_sets"]] == [ts["fingerprint"]]

    rows = json.loads(_ok([*home, "--json", "features", "sql", "SELECT count(*) AS n, count(DISTINCT customer_id) AS c FROM customer_profile"], tmp_path))
    assert rows == [{"n": len(customers) + 2, "c": customers["customer_id"].nunique() + 1}]  # + the pushed rows
    assert "tickets_per_call" in _ok([*home, "features", "show", "usage"], tmp_path)

    # bad input: one red line on stderr, a non-zero exit code, nothing committed
    bad = tmp_path / "bad.csv"
    bad.write_text("customer_id,updated_at,age,wrong\n1,2025-01-01T00:00:00Z,3,4\n")
    proc = run_mlbox([*home, "features", "ingest", "customer_profile", str(bad)], cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "missing column(s)" in line and "extra column(s) wrong" in line
    proc = run_mlbox([*home, "features", "sql", "COPY (SELECT 1) TO 'x.csv'"], cwd=tmp_path)
    assert proc.returncode == 2 and "SELECT" in _one_error_line(proc)
    proc = run_mlbox([*home, "features", "ingest", "nope"], cwd=tmp_path)
    assert proc.returncode == 3 and "nope" in _one_error_line(proc)
    lineage = json.loads(_ok([*home, "--json", "features", "lineage", "customer_profile"], tmp_path))
    assert [b["id"] for b in lineage["versions"][0]["batches"]][0] == profile["id"]  # then the flushed push
