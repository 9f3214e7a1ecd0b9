"""Metrics through prometheus_client: exact counters, sums over worker processes, dead workers' gauges swept."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import timeit
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlbox.api.context import ServeContext
from mlbox.config import load_settings
from mlbox.errors import NotFound, ValidationError
from mlbox.serve.metrics import Metrics

from .conftest import Server, Template, copy_box, open_box, running_server, sample_rows
from ..conftest import OS_USER


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition parsed by prometheus_client's own parser: {(sample, sorted labels): value}."""
    raw = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(raw) for s in f.samples}


PREDICT = (("deployment", "d"), ("route", "predict"), ("status", "200"), ("variant", "primary"))


# one process -------------------------------------------------------------------------------------


def test_counters_render_exactly_at_any_size() -> None:
    m = Metrics(directory=None)
    m.inc("mlbox_requests_total", (("route", "features"), ("status", "200")), 1234567)
    m.inc("mlbox_requests_total", (("route", "predict"), ("status", "500"), ("deployment", "d"), ("variant", "canary")), 123456789012)
    got = samples(m.render())
    assert got[("mlbox_requests_total", (("deployment", ""), ("route", "features"), ("status", "200"), ("variant", "")))] == 1234567
    # an error counted with its deployment and variant
    key = ("mlbox_requests_total", (("deployment", "d"), ("route", "predict"), ("status", "500"), ("variant", "canary")))
    assert got[key] == 123456789012


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="no label 'colour'"):
        Metrics(directory=None).inc("mlbox_requests_total", (("colour", "red"),))


def test_request_counts_and_buckets_each_answer() -> None:
    m = Metrics(directory=None)
    for latency_ms in (0.3, 1.5, 1.5, 40.0, 9000.0):
        m.request("predict", "d", "primary", latency_ms)
    got = samples(m.render())
    assert got[("mlbox_requests_total", PREDICT)] == 5
    labels = (("deployment", "d"), ("variant", "primary"))
    bucket = {dict(k[1])["le"]: v for k, v in got.items() if k[0] == "mlbox_request_latency_seconds_bucket"}
    assert bucket["0.0005"] == 1 and bucket["0.002"] == 3 and bucket["0.05"] == 4 and bucket["2.5"] == 4 and bucket["+Inf"] == 5
    assert got[("mlbox_request_latency_seconds_count", labels)] == 5
    assert got[("mlbox_request_latency_seconds_sum", labels)] == pytest.approx(9.0433)
    assert not any(name.endswith("_created") for name, _ in got)


def test_copied_series_follow_their_source() -> None:
    m = Metrics(directory=None)
    state: dict[str, Any] = {"written": 5.0, "revisions": {"a": 3.0, "b": 1.0}}
    m.gauge("mlbox_prediction_log_written_total", lambda: {(): state["written"]}, "Records written.", "counter")
    m.gauge("mlbox_deployment_revision", lambda: {(("deployment", n),): r for n, r in state["revisions"].items()}, "Rev.",
            labels=("deployment",), aggregate="min")  # fmt: skip
    first = samples(m.render())
    assert first[("mlbox_prediction_log_written_total", ())] == 5
    state["written"], state["revisions"] = 12.0, {"a": 4.0}
    text = m.render().decode()
    assert "# TYPE mlbox_prediction_log_written_total counter" in text
    second = samples(text)
    assert second[("mlbox_prediction_log_written_total", ())] == 12
    assert second[("mlbox_deployment_revision", (("deployment", "a"),))] == 4
    assert ("mlbox_deployment_revision", (("deployment", "b"),)) not in second  # gone from the source, gone here


def test_hot_path_cost(capsys: pytest.CaptureFixture[str]) -> None:
    m = Metrics(directory=None)
    m.request("predict", "d", "primary", 1.0)
    n = 20_000
    per_call_us = min(timeit.repeat(lambda: m.request("predict", "d", "primary", 1.0), number=n, repeat=3)) / n * 1e6
    with capsys.disabled():
        print(f"\nMEASURED Metrics.request: {per_call_us:.2f} us per call (one process)")
    assert per_call_us < 50  # generous for a shared 2-core machine; typical 1-2 us


def test_errors_carry_their_deployment_and_variant(serve_template: Template, tmp_path: Path) -> None:
    home = copy_box(serve_template, tmp_path / "box")
    with open_box(home) as box:
        box.deployments.create("counted", "churn:1", OS_USER)
    ctx = ServeContext(load_settings(home, environ={}))
    ctx.start()
    try:
        bad = ctx.failed("predict", ValidationError("bad row"), "/v1/deployments/counted/predict", "counted", "canary")
        gone = ctx.failed("predict", NotFound("no deployment"), "/v1/deployments/nope/predict", "nope")
        got = samples(ctx.metrics.render())
    finally:
        ctx.close()
    labels = (("deployment", "counted"), ("route", "predict"), ("status", str(bad.status)), ("variant", "canary"))
    assert got[("mlbox_requests_total", labels)] == 1
    # a name that is not deployed is not a label value: anyone could make unbounded series with it
    assert got[("mlbox_requests_total", (("deployment", ""), ("route", "predict"), ("status", str(gone.status)), ("variant", "")))] == 1


# several processes --------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from mlbox.serve.metrics import Metrics
    m = Metrics()
    n = int(sys.argv[1])
    m.gauge("mlbox_requests_in_flight", lambda: {(): 2.0}, "Requests being served now.")
    for _ in range(n):
        m.request("predict", "d", "primary", 1.0)
    m.refresh()
    if sys.argv[2] == "clean":
        m.close()
    """
)


def run_worker(directory: Path, n: int, exit_how: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", WORKER, str(n), exit_how], env=env, check=True, timeout=60)


def test_processes_are_summed_and_dead_ones_leave_the_gauges(tmp_path: Path) -> None:
    run_worker(tmp_path, 1234, "clean")
    run_worker(tmp_path, 4321, "killed")  # exits without close(): its live gauge file stays behind
    assert any(p.name.startswith("gauge_livesum_") for p in tmp_path.iterdir())
    got = samples(Metrics(directory=tmp_path).render())
    assert got[("mlbox_requests_total", PREDICT)] == 1234 + 4321  # counters of finished processes stay in the sum
    assert got[("mlbox_request_latency_seconds_count", (("deployment", "d"), ("variant", "primary")))] == 5555
    assert ("mlbox_requests_in_flight", ()) not in got or got[("mlbox_requests_in_flight", ())] == 0
    assert not any(p.name.startswith("gauge_live") for p in tmp_path.iterdir())  # swept: mark_process_dead


# a real server with two workers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = copy_box(serve_template, tmp_path_factory.mktemp("metrics") / "box")
    with open_box(home) as box:
        box.deployments.create("counted", "churn:1", OS_USER)
        box.deployments.canary("counted", "churn:2", 30, OS_USER)
    with running_server(home, serve_template.tokens, MLBOX_SERVE_WORKERS="2") as server:
        yield server


def worker_of(response: httpx.Response) -> str:
    return str(response.json()["request_id"])[:12]  # each worker's request ids share a random prefix


def fresh_predicts(server: Server, n: int, threads: int = 8) -> list[httpx.Response]:
    """`n` predictions, each on a new connection from `threads` at once, so both workers take some."""
    rows = sample_rows(1)
    out: list[httpx.Response] = []
    lock = threading.Lock()

    def send(count: int) -> None:
        for _ in range(count):
            with httpx.Client(base_url=server.url, timeout=30) as client:
                r = client.post("/v1/deployments/counted/predict", json={"rows": rows}, headers=server.auth())
            with lock:
                out.append(r)

    pool = [threading.Thread(target=send, args=(n // threads,)) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return out


def test_a_scrape_sums_both_workers_exactly(two_workers: Server) -> None:
    answers: list[httpx.Response] = []
    for _ in range(10):  # until both workers have answered some
        answers += fresh_predicts(two_workers, 64)
        if len({worker_of(r) for r in answers}) == 2:
            break
    assert all(r.status_code == 200 for r in answers), answers[0].text
    by_worker = Counter(worker_of(r) for r in answers)
    by_variant = Counter(r.json()["variant"] for r in answers)
    assert len(by_worker) == 2, f"one worker took every request: {by_worker}"
    for _ in range(6):  # each scrape, whichever worker answers it, reports the sum of both
        got = samples(httpx.get(f"{two_workers.url}/metrics", timeout=30).text)
        for variant, n in by_variant.items():
            labels = (("deployment", "counted"), ("route", "predict"), ("status", "200"), ("variant", variant))
            assert got[("mlbox_requests_total", labels)] == n
            count = ("mlbox_request_latency_seconds_count", (("deployment", "counted"), ("variant", variant)))
            assert got[count] == n
    assert sum(by_variant.values()) == len(answers) > max(by_worker.values())
    # the mechanism: BentoML's per-start folder, one counter file per worker process
    folder = two_workers.home / "bentoml" / "prometheus_multiproc_dir"
    assert len(list(folder.glob("counter_*.db"))) == 2


def test_readyz_and_metrics_name_the_execution_provider(two_workers: Server) -> None:
    ready = two_workers.client.get("/readyz", headers=two_workers.auth("viewer")).json()
    assert ready["models"]["counted"] == {
        "primary": {"model": "churn:1", "provider": "CPUExecutionProvider"},
        "canary": {"model": "churn:2", "provider": "CPUExecutionProvider"},
    }
    got = samples(two_workers.client.get("/metrics").text)
    for variant, model in (("primary", "churn:1"), ("canary", "churn:2")):
        labels = (("deployment", "counted"), ("model", model), ("provider", "CPUExecutionProvider"), ("variant", variant))
        assert got[("mlbox_model_info", labels)] == 1
