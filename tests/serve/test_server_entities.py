"""Entity requests on a real `mlbox serve`: features looked up in the online store equal sending them as rows;
an unknown entity is answered from all-missing features. Also /healthz, /readyz and /metrics.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mlbox.flavors import onnx as onnx_files

from ..conftest import OS_USER
from .conftest import Server, deploy, open_box, sample_rows

CUSTOMERS = [1001, 1002, 1003, 1010]
UNKNOWN = [999_999, 888_888]


def feature_refs(home: Path) -> dict[str, str]:
    """Input column -> 'view@version:field' of churn_fs:1."""
    with open_box(home) as box:
        return dict(box.registry.get("churn_fs:1").lineage["feature_refs"])


def predict(server: Server, deployment: str, body: dict[str, Any]) -> dict[str, Any]:
    response = server.client.post(f"/v1/deployments/{deployment}/predict", json=body, headers=server.auth())
    assert response.status_code == 200, response.text
    return dict(response.json())


def online_rows(server: Server, refs: dict[str, str], customers: list[int]) -> list[dict[str, Any]]:
    """The model's input rows for `customers`, read through POST /v1/features/online."""
    response = server.client.post(
        "/v1/features/online",
        json={"features": sorted(set(refs.values())), "entities": [{"customer_id": c} for c in customers]},
        headers=server.auth(),
    )
    assert response.status_code == 200, response.text
    values = response.json()["features"]
    assert values["customer_id"] == customers
    return [{column: values[ref.split(":")[1]][i] for column, ref in refs.items()} for i in range(len(customers))]


def test_entity_request_equals_the_same_features_sent_as_rows(shared_server: Server) -> None:
    refs = feature_refs(shared_server.home)
    assert len(refs) >= 5 and all("@" in r for r in refs.values())
    rows = online_rows(shared_server, refs, CUSTOMERS)
    assert all(v is not None for row in rows for v in row.values()), rows
    by_entity = predict(shared_server, "fs", {"entities": [{"customer_id": c} for c in CUSTOMERS]})
    by_rows = predict(shared_server, "fs", {"rows": rows})
    assert by_entity["model"] == by_rows["model"] == "churn_fs:1"
    assert by_entity["predictions"] == by_rows["predictions"]
    assert len({repr(p) for p in by_entity["predictions"]}) > 1  # different customers, different answers
    one = predict(shared_server, "fs", {"entities": [{"customer_id": CUSTOMERS[2]}]})
    assert one["predictions"] == [by_rows["predictions"][2]]


def test_unknown_entity_is_answered_from_missing_features(shared_server: Server, tmp_path: Path) -> None:
    """The online store has no row for it: every feature is null, encoded as NaN (missing) — 200, not an error."""
    refs = feature_refs(shared_server.home)
    with open_box(shared_server.home) as box:
        onnx_file = box.registry.export("churn_fs:1", "onnx", tmp_path / "fs.onnx")[0]
    all_missing = np.full((1, len(refs)), np.nan, dtype=np.float32)
    expected = onnx_files.run(onnx_files.session(onnx_file, 1), all_missing)[0]

    body = predict(shared_server, "fs", {"entities": [{"customer_id": UNKNOWN[0]}, {"customer_id": CUSTOMERS[0]}, {"customer_id": UNKNOWN[1]}]})
    unknown_a, known, unknown_b = body["predictions"]
    assert unknown_a == unknown_b
    np.testing.assert_allclose([unknown_a["0"], unknown_a["1"]], expected, atol=1e-6)
    assert known == predict(shared_server, "fs", {"entities": [{"customer_id": CUSTOMERS[0]}]})["predictions"][0]
    assert known != unknown_a
    # the same all-null row sent as "rows" is refused: only entity lookups may be missing
    nulls = {column: None for column in refs}
    response = shared_server.client.post("/v1/deployments/fs/predict", json={"rows": [nulls]}, headers=shared_server.auth())
    assert response.status_code == 422


def test_health_and_readiness(shared_server: Server) -> None:
    health = shared_server.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = shared_server.client.get("/readyz", headers=shared_server.auth("viewer"))
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and {"bad", "fs"} <= set(ready.json()["deployments"])
    assert ready.json()["problems"] == {}


def test_metrics_count_requests_latency_and_backlog(shared_server: Server) -> None:
    served = deploy(shared_server, "metered", "churn:1", canary="churn:2", weight=50)
    counts: Counter[str] = Counter()
    for row in sample_rows(40, seed=3):
        response = shared_server.predict("metered", [row])
        assert response.status_code == 200
        counts[response.json()["variant"]] += 1
    assert set(counts) == {"primary", "canary"}
    text = shared_server.client.get("/metrics").text
    for kind in ("mlbox_requests_total counter", "mlbox_request_latency_seconds histogram", "mlbox_prediction_log_backlog gauge"):
        assert f"# TYPE {kind}" in text
    metrics = shared_server.metrics()
    for variant, n in counts.items():
        labels = f'deployment="metered",variant="{variant}"'
        assert metrics[f'mlbox_requests_total{{route="predict",{labels},status="200"}}'] == n
        assert metrics[f"mlbox_request_latency_seconds_count{{{labels}}}"] == n
        assert metrics[f'mlbox_request_latency_seconds_bucket{{{labels},le="+Inf"}}'] == n
        buckets = [v for k, v in metrics.items() if k.startswith(f"mlbox_request_latency_seconds_bucket{{{labels},")]
        assert len(buckets) == 13 and buckets == sorted(buckets)
        assert 0 < metrics[f"mlbox_request_latency_seconds_sum{{{labels}}}"] < n  # seconds, well under 1 s each
    assert metrics["mlbox_prediction_log_backlog"] >= 0
    assert metrics["mlbox_prediction_log_dropped"] == 0
    assert metrics['mlbox_deployment_revision{deployment="metered"}'] == served["revision"]


def test_a_new_deployment_appears_on_readyz_without_a_restart(shared_server: Server) -> None:
    with open_box(shared_server.home) as box:
        box.deployments.create("late", "churn:2", OS_USER)
    shared_server.wait_serving("late")
    assert "late" in shared_server.client.get("/readyz", headers=shared_server.auth("viewer")).json()["deployments"]
    assert shared_server.predict("late", sample_rows(1)).json()["model"] == "churn:2"
