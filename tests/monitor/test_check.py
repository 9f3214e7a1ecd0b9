"""Drift checks end to end on a real box: a trained model's stored profile, a log written by the real writer.

The log's typed columns and the JSON of older files must give the same answer; a shifted window
must drift and an unchanged one must not; `mlbox monitor check` exits 1 on drift and 0 without.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.flavors.signature import Signature
from mlbox.monitor.window import Window
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

from ..conftest import OS_USER

N = 3000


def frame(n: int, seed: int, shift: float = 0.0, mix: tuple[float, float, float] = (0.5, 0.3, 0.2)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(4)})
    out["x0"] += shift
    out["segment"] = rng.choice(["a", "b", "c"], size=n, p=list(mix))
    out["flag"] = rng.random(n) < 0.3
    out["y"] = ((out.x0 + out.x1 + (out.segment == "a")) > 0.5).astype(int)
    return out


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("monitor-check") / "box"
    home.mkdir()
    frame(N, 0).to_parquet(home / "train.parquet")
    b = Box.create(load_settings(home, environ={}), OS_USER)
    b.actor = OS_USER
    raw = {"experiment": "m", "model": "m", "task": "classification", "target": "y", "flavor": "xgboost",
           "data": {"path": "train.parquet"}, "params": {"n_estimators": 10, "max_depth": 3}, "device": "cpu"}  # fmt: skip
    for _ in range(2):
        train(parse_spec(raw, "spec", home), store=None, tracking=b.tracking, registry=b.registry, actor=OS_USER, register=True)
    b.deployments.create("dep", "m:1", OS_USER)
    yield b
    b.close()


def log_rows(b: Any, rows: pd.DataFrame, *, model: str = "m:1", variant: str = "primary", typed: bool = True,
             per_request: int = 1, ts: float | None = None) -> None:  # fmt: skip
    signature = Signature.from_dict(b.registry.get(model).signature)
    log = PredictionLog(b.paths.predictions, b.db, flush_seconds=3600, signature_of=(lambda _r: signature) if typed else None)
    records = []
    inputs = rows.drop(columns=["y"]).to_dict(orient="records")
    now = ts or time.time()
    for i in range(0, len(inputs), per_request):
        chunk = inputs[i : i + per_request]
        outputs = [{"0": 0.4, "1": 0.6} for _ in chunk]
        records.append(Record(now, f"r{i}", "dep", model, variant, False, 1.0, None, orjson.dumps(chunk).decode(),
                              orjson.dumps(outputs).decode(), None))  # fmt: skip
    log.extend(records)
    log.flush()
    log.close()


def clear_log(b: Any) -> None:
    b.db.execute("DELETE FROM prediction_batches")


def test_registered_version_has_a_profile(box: Any) -> None:
    profile = box.monitor.profile("m:1")
    assert profile["format"] == "mlbox-profile/1" and profile["rows"] > 0
    assert set(profile["features"]) == {"x0", "x1", "x2", "x3", "segment", "flag"}
    assert profile["features"]["segment"]["kind"] == "categorical"
    assert set(profile["features"]["flag"]["levels"]) <= {"False", "True"}
    assert profile["outputs"] and profile["importance"] and abs(sum(profile["importance"].values()) - 1) < 1e-9
    # the profile is an artifact doctor keeps
    assert box.db.scalar("SELECT sha256 FROM model_profiles WHERE name = 'm' AND version = 1") in box.registry.artifact_hashes()


def test_writer_adds_typed_columns(box: Any) -> None:
    clear_log(box)
    log_rows(box, frame(50, 1), per_request=5)
    path = box.paths.home / box.db.scalar("SELECT path FROM prediction_batches ORDER BY id DESC LIMIT 1")
    table = pq.read_table(path)
    assert {"n.x0", "c.segment", "c.flag", "y.p_0", "y.p_1"} <= set(table.column_names)
    first = table.slice(0, 1).to_pylist()[0]
    sent = orjson.loads(first["inputs"])
    assert first["n.x0"] == [float(np.float32(r["x0"])) for r in sent]
    assert first["c.flag"] == [str(r["flag"]) for r in sent] and first["c.segment"] == [r["segment"] for r in sent]


def test_unchanged_traffic_does_not_drift_and_shifted_does(box: Any) -> None:
    clear_log(box)
    log_rows(box, frame(N, 7))
    calm = box.monitor.check("dep", Window.parse(last="1h"))
    assert not calm.drifted, [n for n, f in calm.variants["primary"].features.items() if f.drifted]
    assert calm.variants["primary"].rows == N
    clear_log(box)
    log_rows(box, frame(N, 8, shift=0.5, mix=(0.2, 0.3, 0.5)))
    moved = box.monitor.check("dep", Window.parse(last="1h")).as_dict()
    features = moved["variants"]["primary"]["features"]
    assert features["x0"]["drifted"] and features["segment"]["drifted"]
    assert not features["x2"]["drifted"] and not features["x3"]["drifted"]
    assert set(features["x0"]["tests"]) >= {"psi", "ks", "chi2", "js", "wasserstein"}
    assert box.monitor.history("dep")[-1]["checked_at"] == moved["checked_at"]


def test_json_fallback_equals_typed_columns(box: Any) -> None:
    rows = frame(2000, 9, shift=0.3)
    results = []
    for typed in (True, False):
        clear_log(box)
        log_rows(box, rows, typed=typed, per_request=4)
        results.append(box.monitor.check("dep", Window.parse(last="1h"), record=False).as_dict()["variants"])
    assert results[0] == results[1]


def test_window_bounds_and_last_rows(box: Any) -> None:
    clear_log(box)
    old = time.time() - 3 * 86400
    log_rows(box, frame(500, 10, shift=2.0), ts=old)  # three days ago: outside a 24h window
    log_rows(box, frame(800, 11))
    result = box.monitor.check("dep", Window.parse(last="24h"), record=False)
    assert result.variants["primary"].rows == 800 and not result.drifted
    assert box.monitor.check("dep", Window.parse(last="7d"), record=False).variants["primary"].rows == 1300
    assert box.monitor.check("dep", Window.parse(last="7d", last_rows=100), record=False).variants["primary"].rows == 100


def test_canary_is_checked_against_its_own_model(box: Any) -> None:
    clear_log(box)
    box.deployments.canary("dep", "m:2", 20, OS_USER)
    try:
        log_rows(box, frame(1500, 12))
        log_rows(box, frame(1500, 13, shift=1.0), model="m:2", variant="canary")
        result = box.monitor.check("dep", Window.parse(last="1h"), record=False)
        assert set(result.variants) == {"primary", "canary"}
        assert result.variants["canary"].model == "m:2" and result.variants["canary"].features["x0"].drifted
        assert not result.variants["primary"].drifted
    finally:
        box.deployments.rollback("dep", OS_USER)
        box.db.execute("UPDATE deployments SET canary_model = NULL WHERE name = 'dep'")


def test_empty_window_gives_a_clear_result(box: Any) -> None:
    clear_log(box)
    result = box.monitor.check("dep", Window.parse(last="1h"), record=False)
    primary = result.variants["primary"]
    assert primary.rows == 0 and not result.drifted
    assert {f.status for f in primary.features.values()} == {"empty"}


def test_cli_check_exit_codes(box: Any, cli_run: Any) -> None:
    home = str(box.paths.home)
    clear_log(box)
    log_rows(box, frame(N, 14))
    calm = cli_run("--home", home, "monitor", "check", "dep", "--last", "1h")
    assert calm.exit_code == 0, calm.stdout + calm.stderr
    assert "no drift" in calm.stdout
    clear_log(box)
    log_rows(box, frame(N, 15, shift=0.6))
    moved = cli_run("--home", home, "--json", "monitor", "check", "dep", "--last", "1h")
    assert moved.exit_code == 1 and moved.json()["drifted"] is True
    bad = cli_run("--home", home, "monitor", "check", "nope")
    assert bad.exit_code == 3 and "no deployment 'nope'" in bad.stderr and len(bad.stderr.strip().splitlines()) <= 2
    bad = cli_run("--home", home, "monitor", "check", "dep", "--last", "1h", "--since", "2026-01-01")
    assert bad.exit_code == 2 and "either --last or --since" in bad.stderr


def test_history_report_and_policy_commands(box: Any, cli_run: Any, tmp_path: Any) -> None:
    home = str(box.paths.home)
    clear_log(box)
    log_rows(box, frame(N, 16, shift=0.6))
    for _ in range(2):
        assert cli_run("--home", home, "monitor", "check", "dep", "--last", "1h").exit_code == 1
    history = cli_run("--home", home, "--json", "monitor", "history", "dep", "-n", "2")
    assert history.exit_code == 0 and len(history.json()) == 2 and all(r["drifted"] == "DRIFT" for r in history.json())
    out = tmp_path / "report.html"
    report = cli_run("--home", home, "monitor", "report", "dep", "--out", str(out), "--last", "1h")
    assert report.exit_code == 0, report.stderr
    page = out.read_text()
    assert page.count("<svg") >= 6 and "x0" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # offline: no resource from anywhere (xmlns names are not fetched)

    hook = "https://hooks.example.com/mlbox/s3cret-token"
    set_ = cli_run("--home", home, "monitor", "policy", "set", "dep", "--schedule", "1h", "--retrain-on-drift",
                   "--rollback-error-rate", "0.1", "--webhook", hook)  # fmt: skip
    assert set_.exit_code == 0, set_.stderr
    shown = cli_run("--home", home, "--json", "monitor", "policy", "show", "dep")
    policy = shown.json()[0]["policy"]
    assert policy["schedule"] == "1h" and policy["on_drift"]["action"] == "retrain"
    assert "s3cret" not in shown.stdout  # a webhook's path is its secret: shown cut to the host
    bad = cli_run("--home", home, "monitor", "policy", "set", "dep", "--webhook", "http://169.254.169.254/latest")
    assert bad.exit_code == 2 and "169.254.169.254" in bad.stderr
    assert cli_run("--home", home, "monitor", "policy", "remove", "dep").exit_code == 0
    assert cli_run("--home", home, "monitor", "policy", "remove", "dep").exit_code == 3


def test_schedules_queue_one_monitor_job_per_due_slot(box: Any) -> None:
    from mlbox.loop import schedule_due, set_policies
    from mlbox.monitor.policy import parse_policy

    set_policies(box, [parse_policy("dep", {"schedule": "1h"}, "test")], OS_USER)
    assert schedule_due(box) == []  # first due one schedule from now
    later = time.time() + 3601
    jobs = schedule_due(box, now=later)
    assert len(jobs) == 1 and box.jobs.get(jobs[0]).type == "monitor" and box.jobs.get(jobs[0]).payload == {"deployment": "dep"}
    assert schedule_due(box, now=later) == []  # the slot is taken: a second worker queues nothing
    assert len(schedule_due(box, now=later + 3601)) == 1
    box.jobs.cancel(jobs[0], OS_USER)
    for j in box.jobs.list_jobs("queued"):
        box.jobs.cancel(j.id, OS_USER)
    box.monitor.records.remove_policy("dep")


def test_policy_round_alerts_the_webhook(box: Any) -> None:
    import http.server
    import json
    import threading

    from mlbox.loop import run_policy, set_policies
    from mlbox.monitor.policy import parse_policy

    got: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        set_policies(box, [parse_policy("dep", {"window": "1h", "alerts": {"webhook": url, "allow_private": True}}, "test")], OS_USER)
        clear_log(box)
        log_rows(box, frame(N, 17, shift=0.8))
        outcome = run_policy(box, "dep", OS_USER)
        assert outcome["drifted"] and outcome["actions"] == []  # no on_drift rule: an alert, no action
        assert [g["event"] for g in got] == ["drift"] and got[0]["deployment"] == "dep"
        assert "x0" in got[0]["details"]["reason"]
    finally:
        server.shutdown()
        box.monitor.records.remove_policy("dep")


def test_profile_of_a_version_registered_before_profiles(box: Any, cli_run: Any) -> None:
    from mlbox.errors import NotFound

    original = box.monitor.profile("m:1")
    box.db.execute("DELETE FROM model_profiles WHERE name = 'm' AND version = 1")  # as before issue 11
    with pytest.raises(NotFound, match="mlbox monitor profile m:1"):
        box.monitor.check("dep", Window.parse(last="1h"))
    r = cli_run("--home", str(box.paths.home), "monitor", "profile", "m:1")
    assert r.exit_code == 0, r.stderr
    rebuilt = box.monitor.profile("m:1")
    assert rebuilt["features"] == original["features"] and rebuilt["rows"] == original["rows"]
    assert rebuilt["outputs"].keys() == original["outputs"].keys()


def test_one_pass_reader_equals_duckdb_and_mixes_old_and_new_files(box: Any) -> None:
    clear_log(box)
    log_rows(box, frame(1200, 18, shift=0.3), per_request=3)  # typed: read by pyarrow in one pass
    log_rows(box, frame(800, 19), typed=False)  # an older file: JSON only, read by DuckDB
    one_pass = box.monitor.check("dep", Window.parse(last="1h"), record=False).as_dict()["variants"]
    # --last-rows sends every file through DuckDB; a cap above the row count keeps the same rows
    duck = box.monitor.check("dep", Window.parse(last="1h", last_rows=10_000), record=False).as_dict()["variants"]
    assert one_pass["primary"]["rows"] == 2000
    assert one_pass == duck


def test_a_cataloged_file_that_cannot_be_read_is_a_clear_error(box: Any) -> None:
    from mlbox.errors import StoreError

    clear_log(box)
    log_rows(box, frame(100, 20))
    path = box.paths.home / box.db.scalar("SELECT path FROM prediction_batches ORDER BY id DESC LIMIT 1")
    path.chmod(0o644)
    path.write_bytes(b"not parquet at all")
    with pytest.raises(StoreError, match="cannot be read"):
        box.monitor.check("dep", Window.parse(last="1h"), record=False)
    clear_log(box)
