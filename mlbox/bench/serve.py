"""`mlbox bench serve`: one-row predictions through `mlbox serve` against two floors, in one run.

A 200-tree XGBoost classifier on 20 features is trained and registered three times (the
primary, a 10% canary, a shadow); `mlbox serve` runs with prediction logging on. The
floors load the same ONNX file with the same onnxruntime threads and providers and parse
and write JSON with orjson, as mlbox does: a minimal Starlette app under plain uvicorn, and
a default `@bentoml.api` service. A separate load-generator process measures req/s and
p50/p99 at concurrency 1, 8 and 32; servers start in their own process groups on free
loopback ports.

All four servers run at once (an idle one costs nothing measurable) and the designs take
turns: for each concurrency, `rounds` rounds of floor, default BentoML, mlbox with one
worker, mlbox with two, so every design sees the same minutes of the machine. Each figure
reported is the median of its rounds, each figure on its own (req/s, p50 and p99 are
medians over the same rounds; errors are summed).
"""

from __future__ import annotations


import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbox.bench.report import Recorder, Row
from mlbox.bench.train import TrainScale, _make
from mlbox.box import Box
from mlbox.config import child_env, load_settings
from mlbox.security.osuser import effective_os_user
from mlbox.serve import process as server
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

CONCURRENCY = (1, 8, 32)
FLOOR = "floor: Starlette + uvicorn"
ONE, TWO = "mlbox serve, 1 worker", "mlbox serve, 2 workers"


@dataclass(frozen=True)
class ServeScale:
    seconds: float  # per load-generator run
    trees: int
    rounds: int  # turns each design takes at each concurrency


FULL = ServeScale(5.0, 200, 3)
QUICK = ServeScale(1.0, 20, 1)


@dataclass(frozen=True)
class Prepared:
    """The box the benchmark serves: its models, a service token, the primary's ONNX file and a request body."""

    home: Path
    refs: tuple[str, ...]  # primary, canary, shadow
    token: str
    onnx: Path
    body: Path
    threads: int  # serve.threads of the box: the floors use as many


def load(port: int, path: str, concurrency: int, seconds: float, body: Path, token: str = "") -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "mlbox.bench.loadgen", str(port), path, str(concurrency), str(seconds), str(body), token],
        capture_output=True, text=True, timeout=seconds + 90, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One design's figure at one concurrency: the median of its rounds for each measure, errors summed."""
    return {"rps": statistics.median(r["rps"] for r in runs), "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "rounds": len(runs)}  # fmt: skip


def prepare(work: Path, scale: ServeScale) -> Prepared:
    """Train and register three models, deploy them as primary, 10% canary and shadow, and make a token."""
    data = work / "train.parquet"
    _make(data, TrainScale(20_000, 20, scale.trees, 0))
    home = work / "box"
    me = effective_os_user()
    box = Box.create(load_settings(home, environ={}), me)  # `mlbox serve` acts as this OS user
    try:
        spec = {"experiment": "bench", "task": "classification", "target": "y", "flavor": "xgboost",
                "data": {"path": str(data)}, "params": {"n_estimators": scale.trees, "max_depth": 6},
                "split": {"method": "random", "test_size": 0.2, "valid_size": 0}, "device": "cpu"}  # fmt: skip
        refs = []
        for seed in (1, 2, 3):
            trained = train(parse_spec({**spec, "seed": seed}, base_dir=work), store=None, tracking=box.tracking,
                            registry=box.registry, actor=me, register=True)  # fmt: skip
            assert trained.version is not None
            refs.append(trained.version.ref)
        box.deployments.create("bench", refs[0], me)
        box.deployments.canary("bench", refs[1], 10, me)
        box.deployments.shadow("bench", refs[2], me)
        box.identity.add_user(me, "bench-client", "service")
        _, token = box.identity.create_token(me, "bench-client", "service", 3600)
        onnx = box.registry.export(refs[0], "onnx", work / "model.onnx")[0]
        threads = int(box.settings["serve.threads"])
    finally:
        box.close()
    body = work / "body.json"
    body.write_text(json.dumps({"rows": [{f"x{i}": round(0.05 * i, 3) for i in range(20)}]}))
    return Prepared(home, tuple(refs), token, Path(onnx), body, threads)


def measure(ready: Prepared, work: Path, scale: ServeScale, rec: Recorder) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Start the four servers, run every round, stop them (the mlbox servers flush their logs): runs by design, c."""
    env = child_env(
        drop=("MLBOX_TOKEN",), BENTOML_DO_NOT_TRACK="True", BENTOML_HOME=str(work / "bentoml"),
        BENCH_ONNX_MODEL=str(ready.onnx), BENCH_ONNX_THREADS=str(ready.threads), MLBOX_HOME=str(ready.home),
    )  # fmt: skip
    designs: list[tuple[str, list[str], str, str, dict[str, str]]] = [
        (FLOOR, [sys.executable, "-m", "uvicorn", "--factory", "mlbox.bench.floors:starlette_app",
                 "--log-level", "warning", "--no-access-log"], "/predict", "", {}),
        ("default @bentoml.api", [sys.executable, "-m", "bentoml", "serve", "mlbox.bench.default_service:DefaultService"],
         "/predict", "", {}),
        (ONE, [sys.executable, "-m", "mlbox", "serve"], "/v1/deployments/bench/predict", ready.token, {"MLBOX_SERVE_WORKERS": "1"}),
        (TWO, [sys.executable, "-m", "mlbox", "serve"], "/v1/deployments/bench/predict", ready.token, {"MLBOX_SERVE_WORKERS": "2"}),
    ]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        servers: dict[str, tuple[int, str, str]] = {}
        for name, cmd, path, tok, extra in designs:
            rec.stage(f"starting {name}")
            port = server.free_port()
            proc = server.start([*cmd, "--host", "127.0.0.1", "--port", str(port)], {**env, **extra}, port, work / f"{len(procs)}.log")
            procs.append(proc)
            servers[name] = (port, path, tok)
        time.sleep(1.0)  # with several workers, /readyz answers as soon as one of them is up
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in CONCURRENCY} for name in servers}
        for c in CONCURRENCY:
            for turn in range(scale.rounds):
                for name, (port, path, tok) in servers.items():
                    rec.stage(f"c={c}, round {turn + 1}/{scale.rounds}: {name}")
                    runs[name][c].append(load(port, path, c, scale.seconds, ready.body, tok))
        for proc in procs:
            server.stop(proc)
        return runs
    finally:
        for proc in procs:
            if proc.poll() is None:
                server.stop(proc)


def http_rows(runs: dict[str, dict[int, list[dict[str, Any]]]], rec: Recorder) -> None:
    """One row per design and concurrency (medians), the c=32 throughput targets and the c=8 p99 target."""
    results = {name: {c: median(r) for c, r in by_c.items()} for name, by_c in runs.items()}
    floor, one = results[FLOOR], results[ONE]
    for name, res in results.items():
        for c in CONCURRENCY:
            r = res[c]
            target, ok = "report", None
            if name == ONE and c == 32:
                target, ok = ">= 0.8x floor req/s", r["rps"] >= 0.8 * floor[c]["rps"]
            if name == TWO and c == 32:
                target, ok = "> 1 worker's req/s", r["rps"] > one[c]["rps"]
            rec.add(Row(f"{name}, c={c} (median of {r['rounds']} rounds: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                        f"{r['errors']} errors)", r["rps"], floor[c]["rps"], "req/s", target, ok, FLOOR))  # fmt: skip
            if name == ONE and c == 8:
                rec.add(Row(f"{ONE}, c=8: p99 latency (median of {r['rounds']} rounds)", r["p99_ms"], floor[c]["p99_ms"],
                            "ms", "<= 5 ms", r["p99_ms"] <= 5.0, FLOOR))  # fmt: skip


def log_row(ready: Prepared, runs: dict[str, dict[int, list[dict[str, Any]]]], rec: Recorder) -> None:
    """Every measured answer of the mlbox servers, and its shadow answer, is in the prediction log."""
    answered = sum(r["requests"] for name in (ONE, TWO) for rs in runs[name].values() for r in rs)
    with Box(load_settings(ready.home, environ={})) as box:
        logged = box.db.scalar("SELECT coalesce(sum(rows), 0) FROM prediction_batches WHERE deployment = 'bench'")
    rec.add(Row(f"prediction log: answers and shadow answers written, for {answered:,} measured requests (plus warm-ups)",
                float(logged), None, "records", ">= 2 per request", logged >= 2 * answered))  # fmt: skip


# the request path's metrics, as a worker of `mlbox serve` runs them: prometheus_client in
# multiprocess mode (the mode is fixed when prometheus_client is imported, hence a process)
METRICS_PER_REQUEST = """
import statistics, timeit
from mlbox.serve.metrics import Metrics
m = Metrics()
m.request("predict", "bench", "primary", 1.0)
n = 50_000
print(statistics.median(timeit.repeat(lambda: m.request("predict", "bench", "primary", 1.0), number=n, repeat=5)) / n * 1e6)
"""


def metrics_row(work: Path, rec: Recorder) -> None:
    """What `Metrics.request` costs per answered request in a worker (one counter, one histogram observation)."""
    directory = work / "prometheus"
    directory.mkdir()
    proc = subprocess.run([sys.executable, "-c", METRICS_PER_REQUEST], env=child_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    us = float(proc.stdout.strip().splitlines()[-1])
    rec.add(Row("metrics per answered request (prometheus_client multiprocess mode, median of 5)", us, None, "us",
                "<= 5 us", us <= 5.0))  # fmt: skip


def run(scale: ServeScale = FULL, on_row: Callable[[Row], None] | None = None, on_stage: Callable[[str], None] | None = None) -> list[Row]:
    rec = Recorder(on_row, on_stage)
    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-serve-"))
    try:
        rec.stage("training three models")
        ready = prepare(work, scale)
        runs = measure(ready, work, scale, rec)
        http_rows(runs, rec)
        log_row(ready, runs, rec)
        metrics_row(work, rec)
        # rows measured after the servers have stopped, on the same box and files (ready.home,
        # ready.refs[0], ready.onnx), follow here: batch scoring is mlbox/bench/batch.py
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows
