"""`mlbox bench serve`: one-row predictions through `mlbox serve` against two floors, in one run.

A 200-tree XGBoost classifier on 20 features is trained and registered three times (the
primary, a 10% canary, a shadow); `mlbox serve` runs with prediction logging on. The
floors load the same ONNX file: a minimal Starlette app under plain uvicorn, and a default
`@bentoml.api` service. A separate load-generator process measures req/s and p50/p99 at
concurrency 1, 8 and 32; servers start in their own process groups on free loopback ports.

All four servers run at once (an idle one costs nothing measurable) and the designs take
turns: for each concurrency, `rounds` rounds of floor, default BentoML, mlbox with one
worker, mlbox with two. Each figure is the best of its rounds (noise on a shared machine
only ever slows a run down), so the floor and mlbox see the same minutes of the machine.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
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
from mlbox.config import load_settings
from mlbox.serve import process as server
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

CONCURRENCY = (1, 8, 32)


@dataclass(frozen=True)
class ServeScale:
    seconds: float  # per load-generator run
    trees: int
    rounds: int  # turns each design takes at each concurrency


FULL = ServeScale(5.0, 200, 3)
QUICK = ServeScale(1.0, 20, 1)


def load(port: int, path: str, concurrency: int, seconds: float, body: Path, token: str = "") -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "mlbox.bench.loadgen", str(port), path, str(concurrency), str(seconds), str(body), token],
        capture_output=True, text=True, timeout=seconds + 90, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best of several runs of one design: most req/s, least latency, fewest errors."""
    return {"rps": max(r["rps"] for r in runs), "p50_ms": min(r["p50_ms"] for r in runs),
            "p99_ms": min(r["p99_ms"] for r in runs), "errors": min(r["errors"] for r in runs)}  # fmt: skip


def run(scale: ServeScale = FULL, on_row: Callable[[Row], None] | None = None, on_stage: Callable[[str], None] | None = None) -> list[Row]:
    rec = Recorder(on_row, on_stage)
    stage = rec.stage
    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-serve-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stage("training three models")
        data = work / "train.parquet"
        _make(data, TrainScale(20_000, 20, scale.trees, 0))
        home = work / "box"
        me = getpass.getuser()
        box = Box.create(load_settings(home, environ={}), me)  # `mlbox serve` acts as this OS user
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
        box.close()
        body = work / "body.json"
        body.write_text(json.dumps({"rows": [{f"x{i}": round(0.05 * i, 3) for i in range(20)}]}))
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(work / "bentoml"),
               "BENCH_ONNX_MODEL": str(onnx), "MLBOX_HOME": str(home)}  # fmt: skip
        env.pop("MLBOX_TOKEN", None)
        designs: list[tuple[str, list[str], str, str, dict[str, str]]] = [
            ("floor: Starlette + uvicorn", [sys.executable, "-m", "uvicorn", "--factory", "mlbox.bench.floors:starlette_app",
             "--log-level", "warning", "--no-access-log"], "/predict", "", {}),
            ("default @bentoml.api", [sys.executable, "-m", "bentoml", "serve", "mlbox.bench.default_service:DefaultService"],
             "/predict", "", {}),
            ("mlbox serve, 1 worker", [sys.executable, "-m", "mlbox", "serve"], "/v1/deployments/bench/predict", token,
             {"MLBOX_SERVE_WORKERS": "1"}),
            ("mlbox serve, 2 workers", [sys.executable, "-m", "mlbox", "serve"], "/v1/deployments/bench/predict", token,
             {"MLBOX_SERVE_WORKERS": "2"}),
        ]  # fmt: skip
        servers: dict[str, tuple[int, str, str]] = {}
        for name, cmd, path, tok, extra in designs:
            stage(f"starting {name}")
            port = server.free_port()
            proc = server.start([*cmd, "--host", "127.0.0.1", "--port", str(port)], {**env, **extra}, port, work / f"{len(procs)}.log")
            procs.append(proc)
            servers[name] = (port, path, tok)
        time.sleep(1.0)  # with several workers, /readyz answers as soon as one of them is up
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in CONCURRENCY} for name in servers}
        for c in CONCURRENCY:
            for turn in range(scale.rounds):
                for name, (port, path, tok) in servers.items():
                    stage(f"c={c}, round {turn + 1}/{scale.rounds}: {name}")
                    runs[name][c].append(load(port, path, c, scale.seconds, body, tok))
        results = {name: {c: best(r) for c, r in by_c.items()} for name, by_c in runs.items()}
        floor = results["floor: Starlette + uvicorn"]
        one = results["mlbox serve, 1 worker"]
        for name, res in results.items():
            for c in CONCURRENCY:
                r = res[c]
                target, ok = "report", None
                if name == "mlbox serve, 1 worker" and c == 32:
                    target, ok = ">= 0.6x floor req/s", r["rps"] >= 0.6 * floor[c]["rps"]
                if name == "mlbox serve, 2 workers" and c == 32:
                    target, ok = "> 1 worker's req/s", r["rps"] > one[c]["rps"]
                row = Row(f"{name}, c={c} (p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['errors']} errors)",
                          r["rps"], floor[c]["rps"], "req/s", target, ok, "Starlette + uvicorn")  # fmt: skip
                rec.add(row)
                if name == "mlbox serve, 1 worker" and c == 8:
                    p99 = Row("mlbox serve, 1 worker, c=8: p99 latency", r["p99_ms"], floor[c]["p99_ms"], "ms",
                              "<= 5 ms", r["p99_ms"] <= 5.0, "Starlette + uvicorn")  # fmt: skip
                    rec.add(p99)
        for proc in procs:
            server.stop(proc)  # the servers flush their prediction logs
        answered = sum(r["requests"] for name in servers if name.startswith("mlbox") for rs in runs[name].values() for r in rs)
        with Box(load_settings(home, environ={})) as box:
            logged = box.db.scalar("SELECT coalesce(sum(rows), 0) FROM prediction_batches WHERE deployment = 'bench'")
        rec.add(Row(f"prediction log: answers and shadow answers written, for {answered:,} measured requests (plus warm-ups)",
                    float(logged), None, "records", ">= 2 per request", logged >= 2 * answered))  # fmt: skip
    finally:
        for proc in procs:
            if proc.poll() is None:
                server.stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows
