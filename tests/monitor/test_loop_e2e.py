"""The closed loop with real processes: serve, drift, a policy's retrain through `mlbox worker`, a canary, a rollback.

1. `mlbox serve` answers drifted traffic for `dep` (primary m:1); the log is written by its sidecar.
2. A `monitor` job (run by `mlbox worker --once`) checks the window, finds drift and enqueues a
   retrain from m:1's own spec; the same worker trains m:2 and deploys it as a 50% canary.
3. The server picks the canary up; its answers are labelled wrong (the primary's right), so the
   next round's A/B verdict is `canary worse` and the policy rolls the canary back.
Every step is in `monitor_actions` and the audit chain, with the evidence that triggered it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlbox.box import Box
from mlbox.config import child_env, load_settings
from mlbox.serve import process as server
from mlbox.serve.metrics import metric_names
from mlbox.train.runner import train
from mlbox.train.spec import load_spec

from ..conftest import OS_USER, run_mlbox, wait_for

pytestmark = pytest.mark.slow

SPEC = """
experiment: m
model: m
task: classification
target: y
flavor: xgboost
data: {path: train.parquet}
params: {n_estimators: 10, max_depth: 3}
device: cpu
"""
POLICY = """
deployments:
  dep:
    window: 1h
    on_drift: {action: retrain, canary_weight: 50, cooldown: 1d}
    on_canary_breach: {quality_delta: -0.05, min_labels: 50, error_rate: 0.5, cooldown: 1h}
"""


def frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(3)})
    out["x0"] += shift
    out["segment"] = rng.choice(["a", "b"], size=n)
    out["y"] = ((out.x0 + out.x1) > 0).astype(int)
    return out


def send(client: httpx.Client, rows: pd.DataFrame) -> list[dict[str, Any]]:
    answers = []
    for row in rows.drop(columns=["y"]).to_dict(orient="records"):
        r = client.post("/v1/deployments/dep/predict", json={"rows": [row]})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers


def logged(home: Path) -> int:
    with Box(load_settings(home, environ={})) as box:
        return int(box.db.scalar("SELECT coalesce(sum(rows), 0) FROM prediction_batches"))


def test_drift_retrains_deploys_a_canary_and_rolls_it_back(tmp_path: Path) -> None:
    home = tmp_path / "box"
    home.mkdir()
    frame(2000, 0).to_parquet(home / "train.parquet")
    (home / "train.yaml").write_text(SPEC)
    (home / "monitoring.yaml").write_text(POLICY)
    box = Box.create(load_settings(home, environ={}), OS_USER)
    box.actor = OS_USER
    train(load_spec(home / "train.yaml"), store=None, tracking=box.tracking, registry=box.registry, actor=OS_USER, register=True)
    box.deployments.create("dep", "m:1", OS_USER)
    box.identity.add_user(OS_USER, "app", "service")
    token = box.identity.create_token(OS_USER, "app", never_expires=True)[1]
    box.close()
    env = {"MLBOX_HOME": str(home)}
    assert run_mlbox(["monitor", "apply", "monitoring.yaml"], cwd=home, env=env).returncode == 0

    port = server.free_port()
    proc = server.start([sys.executable, "-m", "mlbox", "serve", "--host", "127.0.0.1", "--port", str(port)],
                        child_env(drop=("MLBOX_TOKEN",), MLBOX_HOME=str(home)), port, home / "logs" / "e2e-serve.log")  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            send(client, frame(400, 1, shift=1.5))  # drifted traffic
            wait_for(lambda: logged(home) >= 400, 30, "the drifted traffic in the log")

            # round 1: the monitor job finds drift and enqueues a retrain; the same worker trains and deploys a canary
            r = run_mlbox(["jobs", "submit", "monitor", "dep"], cwd=home, env=env)
            assert r.returncode == 0, r.stderr
            r = run_mlbox(["worker", "--once", "--gpus", "none"], cwd=home, env=env, timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            with Box(load_settings(home, environ={})) as b:
                actions = b.monitor.records.actions("dep")
                assert [(a["action"], a["status"]) for a in actions] == [("retrain", "enqueued"), ("deploy_canary", "done")]
                assert actions[0]["evidence"]["window"] and actions[0]["evidence"]["drifted"]["features"]["x0"]
                d = b.deployments.get("dep")
                assert (d.primary_model, d.canary_model, d.canary_weight) == ("m:1", "m:2", 50.0)
                job = b.jobs.get(int(actions[0]["job_id"]))
                assert job.type == "train" and job.status == "succeeded"

            # the server shows the stored verdicts: the monitoring route and the gauges of /metrics
            view = client.get("/v1/deployments/dep/monitoring")
            assert view.status_code == 200, view.text
            body = view.json()
            assert body["drift"]["drifted"] is True and body["drift"]["variants"]["primary"]["features"]["x0"]["drifted"]
            assert [a["action"] for a in body["actions"]] == ["retrain", "deploy_canary"]
            assert body["policy"]["on_drift"]["canary_weight"] == 50
            assert client.get("/v1/deployments/nope/monitoring").status_code == 404
            metrics = wait_for(lambda: _gauges(client), 15, "drift gauges on /metrics")
            assert 'mlbox_drift_detected{deployment="dep",variant="primary"} 1.0' in metrics
            assert 'mlbox_drift_score{deployment="dep",feature="x0",test="wasserstein",variant="primary"}' in metrics
            assert 'mlbox_monitor_last_check_timestamp_seconds{deployment="dep"}' in metrics
            described = {line.split()[2] for line in metrics.splitlines() if line.startswith("# HELP mlbox_")}
            # what the Grafana dashboard's test checks its queries against; the shadow counters
            # have no series (so no HELP line) on a deployment without a shadow
            shadow = {"mlbox_shadow_errors_total", "mlbox_shadow_predictions_total", "mlbox_shadow_disagreements_total"}
            assert described <= set(metric_names()) and set(metric_names()) - described <= shadow

            # the server picks up the canary; its answers are labelled wrong, the primary's right
            answers = wait_for(lambda: _both_variants(client), 30, "canary traffic")
            answers += send(client, frame(300, 2))
            labels = pd.DataFrame({
                "request_id": [a["request_id"] for a in answers],
                "label": [_label(a, a["variant"] == "primary") for a in answers],
            })  # fmt: skip
            labels.to_csv(home / "labels.csv", index=False)
            wait_for(lambda: logged(home) >= 400 + len(answers), 30, "the canary traffic in the log")
            r = run_mlbox(["labels", "ingest", "dep", "labels.csv"], cwd=home, env=env)
            assert r.returncode == 0, r.stderr

            # round 2: the A/B verdict says canary worse; the policy rolls it back
            r = run_mlbox(["jobs", "submit", "monitor", "dep"], cwd=home, env=env)
            assert r.returncode == 0, r.stderr
            r = run_mlbox(["worker", "--once", "--gpus", "none"], cwd=home, env=env, timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
    finally:
        server.stop(proc)

    with Box(load_settings(home, environ={})) as b:
        actions = b.monitor.records.actions("dep")
        assert [(a["action"], a["status"]) for a in actions] == [
            ("retrain", "enqueued"), ("deploy_canary", "done"), ("rollback", "done")]  # fmt: skip
        rollback = actions[-1]
        assert rollback["model"] == "m:2" and "breaches its limits" in rollback["reason"]
        assert rollback["evidence"]["ab"]["verdict"] == "canary worse"
        assert b.deployments.get("dep").canary_weight == 0.0
        assert b.audit.verify().ok
        rows = b.db.query("SELECT action, details FROM audit WHERE action LIKE 'monitor.%' AND action != 'monitor.policy' ORDER BY seq")
        assert [r["action"] for r in rows] == ["monitor.retrain", "monitor.deploy_canary", "monitor.rollback"]
        retrain, rollback_entry = json.loads(rows[0]["details"]), json.loads(rows[2]["details"])
        assert retrain["evidence"]["thresholds"] and retrain["job"]
        assert rollback_entry["evidence"]["ab"]["verdict"] == "canary worse" and rollback_entry["model"] == "m:2"


def _both_variants(client: httpx.Client) -> list[dict[str, Any]] | None:
    answers = send(client, frame(40, int(time.time() * 1000) % 10_000))
    return answers if any(a["variant"] == "canary" for a in answers) else None


def _gauges(client: httpx.Client) -> str | None:
    text = client.get("/metrics").text
    return text if "mlbox_drift_detected{" in text else None


def _label(answer: dict[str, Any], right: bool) -> int:
    """The class the model predicted (right) or the other one (wrong)."""
    probs = answer["predictions"][0]
    predicted = int(max(probs, key=probs.get))
    return predicted if right else 1 - predicted
