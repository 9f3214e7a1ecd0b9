"""Shadow isolation on a real `mlbox serve` with real ONNX models: a slow shadow and a failing shadow change
neither the answers nor the latency of the request path; the failing one shows up in /metrics.

The two shadow models are registered by hand with churn:1's signature:

    churn_slow:1    a chain of 1024x1024 MatMuls that depends on the input (so onnxruntime cannot fold it),
                    calibrated to take about a second per call on this machine, then probabilities [N, 2]
    churn_broken:1  reshapes the [N, 7] input to [625] — 7·N is never 625, so every call fails at run time

The server runs with auth off (MLBOX_SERVE_AUTH=false): no request here sends a token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlbox.flavors import onnx as onnx_files

from ..conftest import OS_USER
from .conftest import Server, Template, copy_box, open_box, percentile, running_server, sample_rows, wait_for

SLOW_TARGET_S = 1.0
MATRIX = 1024
P50_SLACK_MS = 5.0
REQUESTS = 100


def build_onnx(path: Path, n_features: int, *, matmuls: int = 0, broken: bool = False) -> Path:
    """A classifier-shaped ONNX graph: X [N, n_features] -> probabilities [N, 2] (sigmoid of a fixed linear score).

    `matmuls` chains that many MatMuls of an identity matrix (plus 0·sum(X), so the chain depends on the input and
    is computed at run time) into the score; `broken` reshapes X to an impossible shape, failing every run.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.full((n_features, 1), 0.1, np.float32), "w"),
        numpy_helper.from_array(np.array(0, np.float32), "nought"),
        numpy_helper.from_array(np.array(1, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "w"], ["score0"]),
        helper.make_node("ReduceSum", ["X"], ["xsum"], keepdims=0),
        helper.make_node("Mul", ["xsum", "nought"], ["zero"]),  # 0, known only at run time
    ]
    extra = "zero"
    if matmuls:
        inits.append(numpy_helper.from_array(np.eye(MATRIX, dtype=np.float32), "A"))
        nodes.append(helper.make_node("Add", ["A", "zero"], ["M0"]))
        nodes += [helper.make_node("MatMul", [f"M{i}", "A"], [f"M{i + 1}"]) for i in range(matmuls)]
        nodes += [helper.make_node("ReduceSum", [f"M{matmuls}"], ["msum"], keepdims=0), helper.make_node("Mul", ["msum", "nought"], ["extra"])]
        extra = "extra"
    if broken:
        inits.append(numpy_helper.from_array(np.array([625], np.int64), "impossible_shape"))
        nodes += [
            helper.make_node("Reshape", ["X", "impossible_shape"], ["flat"]),
            helper.make_node("ReduceSum", ["flat"], ["fsum"], keepdims=0),
            helper.make_node("Mul", ["fsum", "nought"], ["extra"]),
        ]
        extra = "extra"
    nodes += [
        helper.make_node("Add", ["score0", extra], ["score"]),
        helper.make_node("Sigmoid", ["score"], ["p1"]),
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "shadow_test", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_seconds(path: Path, n_features: int, repeat: int = 1) -> float:
    """Seconds of one call (the fastest of `repeat`), in a one-thread session like the server's (serve.threads = 1)."""
    session = onnx_files.session(path, 1)
    X = np.zeros((1, n_features), np.float32)
    onnx_files.run(session, X)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        onnx_files.run(session, X)
        times.append(time.perf_counter() - started)
    return min(times)


def calibrated_slow_model(folder: Path, n_features: int) -> tuple[Path, float]:
    """The slow model, with as many MatMuls as take about SLOW_TARGET_S here, and its measured time per call."""
    probe = build_onnx(folder / "probe.onnx", n_features, matmuls=4)
    per_matmul = run_seconds(probe, n_features, repeat=3) / 4
    matmuls = int(min(max(round(SLOW_TARGET_S / per_matmul), 8), 400))
    path = build_onnx(folder / "slow.onnx", n_features, matmuls=matmuls)
    return path, run_seconds(path, n_features)


def register(home: Path, name: str, path: Path, like: str) -> str:
    with open_box(home) as box:
        primary = box.registry.get(like)
        version = box.registry.register(
            name, files={"model.onnx": path}, flavor="onnx", task=primary.task, signature=primary.signature,
            reference_stats={}, metrics={}, lineage={"note": "hand-built ONNX graph for the shadow tests"},
            run_id=None, onnx_max_abs_diff=None, onnx_tolerance=None, actor=OS_USER,
        )  # fmt: skip
    return version.ref


@pytest.fixture(scope="module")
def shadow_setup(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, float]]:
    folder = tmp_path_factory.mktemp("shadow")
    home = copy_box(serve_template, folder / "box")
    slow_path, slow_seconds = calibrated_slow_model(folder, n_features=7)
    slow = register(home, "churn_slow", slow_path, "churn:1")
    broken = register(home, "churn_broken", build_onnx(folder / "broken.onnx", 7, broken=True), "churn:1")
    with open_box(home) as box:
        for name, shadow in (("plain", None), ("slowshadow", slow), ("badshadow", broken)):
            box.deployments.create(name, "churn:1", OS_USER)
            if shadow:
                box.deployments.shadow(name, shadow, OS_USER)
    with running_server(home, MLBOX_SERVE_AUTH="false") as server:
        yield server, slow_seconds


def burst(server: Server, deployment: str, rows: list[dict[str, Any]]) -> tuple[list[float], list[Any]]:
    """One request per row, one after another: client-side latencies (ms) and the answers."""
    latencies, answers = [], []
    for row in rows:
        started = time.perf_counter()
        response = server.client.post(f"/v1/deployments/{deployment}/predict", json={"rows": [row]})
        latencies.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
        answers.append((response.json()["model"], response.json()["variant"], response.json()["predictions"]))
    return latencies, answers


def shadow_count(server: Server, name: str, deployment: str, reason: str | None = None) -> float:
    labels = f'deployment="{deployment}"' + (f',reason="{reason}"' if reason else "")
    return server.metrics().get(f"{name}{{{labels}}}", 0.0)


def test_slow_shadow_does_not_slow_the_answers(shadow_setup: tuple[Server, float]) -> None:
    server, slow_seconds = shadow_setup
    assert slow_seconds > 0.4, f"the slow model takes only {slow_seconds:.2f} s: the test would prove nothing"
    rows = sample_rows(REQUESTS, seed=11)
    burst(server, "plain", rows[:10])  # warm the connection and the primary
    base_ms, base_answers = burst(server, "plain", rows)
    shadow_ms, shadow_answers = burst(server, "slowshadow", rows)
    behind = shadow_count(server, "mlbox_shadow_predictions_total", "slowshadow")
    p50_base, p50_shadow = percentile(base_ms, 50), percentile(shadow_ms, 50)
    print(f"MEASURED slow shadow ({slow_seconds:.2f} s per call): p50 {p50_base:.2f} ms without, {p50_shadow:.2f} ms with; "
          f"p99 {percentile(base_ms, 99):.2f} / {percentile(shadow_ms, 99):.2f} ms; max {max(shadow_ms):.1f} ms; "
          f"shadow predictions done when the burst ended: {behind:g}/{REQUESTS}")  # fmt: skip
    assert shadow_answers == base_answers
    # the burst ended before the shadow caught up: no answer waited for it
    assert behind < REQUESTS
    assert max(shadow_ms) < slow_seconds * 1000 / 2, "a request waited for a shadow run"
    assert p50_shadow - p50_base <= P50_SLACK_MS
    # ... and yet every request was mirrored
    wait_for(lambda: shadow_count(server, "mlbox_shadow_predictions_total", "slowshadow") == REQUESTS, 60, "the shadow to catch up")
    assert shadow_count(server, "mlbox_shadow_errors_total", "slowshadow", "error") == 0


def test_failing_shadow_changes_nothing_and_is_counted(shadow_setup: tuple[Server, float]) -> None:
    server, _ = shadow_setup
    rows = sample_rows(REQUESTS, seed=12)
    burst(server, "plain", rows[:10])
    base_ms, base_answers = burst(server, "plain", rows)
    broken_ms, broken_answers = burst(server, "badshadow", rows)
    p50_base, p50_broken = percentile(base_ms, 50), percentile(broken_ms, 50)
    print(f"MEASURED failing shadow: p50 {p50_base:.2f} ms without, {p50_broken:.2f} ms with")
    assert broken_answers == base_answers
    assert p50_broken - p50_base <= P50_SLACK_MS
    errors = wait_for(
        lambda: shadow_count(server, "mlbox_shadow_errors_total", "badshadow", "error") == REQUESTS, 30, "shadow errors in /metrics"
    )
    assert errors
    assert "# TYPE mlbox_shadow_errors_total counter" in server.client.get("/metrics").text
    assert shadow_count(server, "mlbox_shadow_predictions_total", "badshadow") == 0
    ready = server.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["problems"] == {}


def test_auth_off_needs_no_token(shadow_setup: tuple[Server, float]) -> None:
    server, _ = shadow_setup
    assert server.client.get("/v1/deployments/plain").json()["shadow_model"] is None
    assert server.client.post("/v1/deployments/plain/predict", json={"rows": sample_rows(2)}).status_code == 200
