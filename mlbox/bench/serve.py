"""`mlbox bench serve`: one-row predictions through `mlbox serve` against two floors, in one run.

A 200-tree XGBoost classifier on 20 features is trained and registered three times (the
primary, a 10% canary, a shadow); `mlbox serve` runs with prediction logging on. The
floors load the same ONNX file: a minimal Starlette app under plain uvicorn, and a default
`@bentoml.api` service. A separate load-generator process measures req/s and p50/p99 at
concurrency 1, 8 and 32; servers start in their own process groups on free loopback ports.
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
    seconds: float
    rounds: int


FULL = ServeScale(5.0, 200)
QUICK = ServeScale(1.0, 20)


def load(port: int, path: str, seconds: float, body: Path, token: str = "") -> dict[int, dict[str, Any]]:
    out = {}
    for c in CONCURRENCY:
        proc = subprocess.run(
            [sys.executable, "-m", "mlbox.bench.loadgen", str(port), path, str(c), str(seconds), str(body), token],
            capture_output=True, text=True, timeout=seconds + 90, check=True,
        )  # fmt: skip
        out[c] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run(scale: ServeScale = FULL, on_row: Callable[[Row], None] | None = None, on_stage: Callable[[str], None] | None = None) -> list[Row]:
    rec = Recorder(on_row, on_stage)
    stage = rec.stage
    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-serve-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stage("training three models")
        data = work / "train.parquet"
        _make(data, TrainScale(20_000, 20, scale.rounds, 0))
        home = work / "box"
        me = getpass.getuser()
        box = Box.create(load_settings(home, environ={}), me)  # `mlbox serve` acts as this OS user
        spec = {"experiment": "bench", "task": "classification", "target": "y", "flavor": "xgboost",
                "data": {"path": str(data)}, "params": {"n_estimators": scale.rounds, "max_depth": 6},
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
        results: dict[str, dict[int, dict[str, Any]]] = {}
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
        for name, cmd, path, tok, extra in designs:
            stage(name)
            port = server.free_port()
            proc = server.start([*cmd, "--host", "127.0.0.1", "--port", str(port)], {**env, **extra}, port, work / f"{len(results)}.log")
            procs.append(proc)
            time.sleep(1.0)  # with several workers, /readyz answers as soon as one of them is up
            try:
                results[name] = load(port, path, scale.seconds, body, tok)
            finally:
                server.stop(proc)
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
        with Box(load_settings(home, environ={})) as box:
            logged = box.db.scalar("SELECT coalesce(sum(rows), 0) FROM prediction_batches")
        stage(f"{logged} predictions logged")
    finally:
        for proc in procs:
            if proc.poll() is None:
                server.stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows
