"""`mlbox bench train`: training through mlbox against the same library call made directly.

(a) XGBoost: `mlbox train` on a Parquet file (read, encode, split, fit with per-round
progress and metric logging, evaluate, save, track) against `xgboost.train` with the same
parameters, rows and evaluation sets. The two alternate for ROUNDS rounds (floor first in
even rounds, mlbox first in odd ones, so neither always runs on a warmer machine) and each
figure is the median of its rounds; the median seconds of each `train` phase follow, so
the gap has a name. The ONNX export and parity check are timed on their own. (b) Tracking:
`run.log_metric` calls per second against raw buffered sqlite3 inserts of the same rows
into the same table.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlbox.bench.report import Recorder, Row, settle
from mlbox.config import load_settings
from mlbox.features.offline import connect
from mlbox.features.pit import lit
from mlbox.registry.store import Registry
from mlbox.store.artifacts import ArtifactStore
from mlbox.store.audit import AuditLog, load_or_create_key
from mlbox.store.layout import BoxPaths, open_meta
from mlbox.tracking.run import ActiveRun
from mlbox.tracking.store import TrackingStore
from mlbox.train.runner import parity, train
from mlbox.train.spec import parse_spec


@dataclass(frozen=True)
class TrainScale:
    rows: int
    features: int
    rounds: int
    metric_calls: int
    threads: int = 0  # xgboost nthread (0: every core); 1 takes OpenMP scheduling noise out on a busy machine


FULL = TrainScale(1_000_000, 20, 200, 200_000)
QUICK = TrainScale(20_000, 20, 20, 20_000)
ROUNDS = 3


def _make(path: Path, s: TrainScale) -> None:
    con = connect()
    cols = ", ".join(f"random() AS x{i}" for i in range(s.features))
    con.execute("SELECT setseed(0.7)")
    con.execute(f"CREATE TABLE t AS SELECT {cols} FROM range({s.rows})")
    signal = " + ".join(f"{(-1) ** i * (i % 5 + 1) / 5} * x{i}" for i in range(s.features))
    con.execute(
        f"COPY (SELECT *, CASE WHEN {signal} + 0.3 * (random() - 0.5) > {sum((-1) ** i * (i % 5 + 1) / 10 for i in range(s.features))} "
        f"THEN 1 ELSE 0 END AS y FROM t) TO {lit(path)} (FORMAT parquet)"
    )
    con.close()


def run(scale: TrainScale = FULL, on_row: Callable[[Row], None] | None = None, on_stage: Callable[[str], None] | None = None) -> list[Row]:
    import xgboost as xgb

    from mlbox.flavors.base import FitRequest
    from mlbox.flavors.xgboost import XGBoostFlavor, booster_params

    rec = Recorder(on_row, on_stage)
    add, stage = rec.add, rec.stage

    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-train-"))
    try:
        stage("generating data")
        data = work / "train.parquet"
        _make(data, scale)
        paths = BoxPaths(work / "box")
        db = open_meta(paths, busy_timeout_ms=30000, synchronous="NORMAL", create=True)
        audit = AuditLog(db, load_or_create_key(paths.audit_key))
        artifacts = ArtifactStore(paths.artifacts)
        tracking, registry = TrackingStore(db, artifacts), Registry(db, artifacts, audit)
        params = {"n_estimators": scale.rounds, "max_depth": 6, "learning_rate": 0.1, "nthread": scale.threads}
        spec = parse_spec(
            {
                "experiment": "bench", "task": "classification", "target": "y", "flavor": "xgboost",
                "data": {"path": str(data)}, "params": params, "split": {"method": "random", "test_size": 0.2},
                "metrics": ["roc_auc", "log_loss"], "seed": 1, "device": "cpu", "early_stopping_rounds": scale.rounds,
            },  # fmt: skip
            base_dir=work,
        )
        load_settings(paths.home, environ={})

        # (a) the floor: the same xgboost.train call on the same rows, with the same evaluation sets
        stage("encoding the floor's rows")
        import pandas as pd

        from mlbox.flavors.signature import Signature
        from mlbox.train import data as datamod

        frame = pd.read_parquet(data)
        td = datamod.TrainingData(frame, [c for c in frame.columns if c != "y"], None, "")
        sig = Signature.infer(frame, td.features, "y", "classification")
        X, y = sig.encode(frame), sig.encode_target(frame["y"])
        part = datamod.split(td, spec.split, spec.seed)[0]
        request = FitRequest("classification", X[part.train], y[part.train], X[part.valid], y[part.valid],
                             sig.names, {}, 2, params, 1, "cpu", early_stopping_rounds=scale.rounds)  # fmt: skip
        booster_kw, rounds = booster_params(request)

        def direct() -> None:
            dtrain = xgb.DMatrix(request.X_train, label=request.y_train, missing=np.nan)
            dvalid = xgb.DMatrix(request.X_valid, label=request.y_valid, missing=np.nan)
            xgb.train(booster_kw, dtrain, rounds, evals=[(dtrain, "train"), (dvalid, "valid")],
                      early_stopping_rounds=scale.rounds, verbose_eval=False)  # fmt: skip

        def through_mlbox() -> dict[str, float]:
            return train(spec, store=None, tracking=tracking, registry=registry, actor="bench").phase_seconds

        floors: list[float] = []
        tooks: list[float] = []
        cpu: dict[str, list[float]] = {"floor": [], "mlbox": []}  # CPU seconds: what contention on a busy machine does not inflate
        phases: list[dict[str, float]] = []
        for i in range(ROUNDS):
            for which in ("floor", "mlbox") if i % 2 == 0 else ("mlbox", "floor"):
                stage(f"round {i + 1}/{ROUNDS}: {'xgboost.train directly' if which == 'floor' else 'mlbox train'}")
                settle()
                start, cpu_start = time.perf_counter(), time.process_time()
                if which == "floor":
                    direct()
                    floors.append(time.perf_counter() - start)
                else:
                    phases.append(through_mlbox())
                    tooks.append(time.perf_counter() - start)
                cpu[which].append(time.process_time() - cpu_start)
        floor, took = statistics.median(floors), statistics.median(tooks)
        name = f"xgboost {scale.rounds} rounds on {scale.rows:,} x {scale.features} (mlbox train vs xgboost.train, median of {ROUNDS})"
        add(Row(name, took, floor, "s", "ratio <= 1.10", took / floor <= 1.10, "xgboost.train"))
        breakdown = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
        run_id = tracking.runs("bench", limit=1)[0].id

        stage("ONNX export")
        flavor = XGBoostFlavor()
        model = flavor.fit(request).model
        start = time.perf_counter()
        flavor.to_onnx(model, X.shape[1], "classification", 2, work / "m.onnx")
        diff, _tol = parity(flavor, model, work / "m.onnx", X[part.test][:2000], "classification")
        took = time.perf_counter() - start
        add(Row(f"ONNX export + parity check (max |diff| {diff:.1e})", took, None, "s", "report", None))

        # (b) log_metric throughput vs raw buffered inserts
        stage("log_metric")
        n = scale.metric_calls
        active = ActiveRun(tracking, tracking.create_run("bench", "metrics", "bench"))
        start = time.perf_counter()
        for i in range(n):
            active.log_metric("loss", 1.0 / (i + 1), step=i)
        active.end()
        mlbox_rate = n / (time.perf_counter() - start)
        raw = sqlite3.connect(paths.meta_db, isolation_level=None)
        start = time.perf_counter()
        buffer = []
        for i in range(n):
            buffer.append((run_id, "loss", i, 1.0 / (i + 1), time.time()))
            if len(buffer) >= 5000:
                raw.execute("BEGIN IMMEDIATE")
                raw.executemany("INSERT INTO metrics (run_id, key, step, value, ts) VALUES (?, ?, ?, ?, ?)", buffer)
                raw.execute("COMMIT")
                buffer = []
        if buffer:
            raw.executemany("INSERT INTO metrics (run_id, key, step, value, ts) VALUES (?, ?, ?, ?, ?)", buffer)
        raw_rate = n / (time.perf_counter() - start)
        raw.close()
        add(Row(f"run.log_metric, {n:,} calls", mlbox_rate, raw_rate, "calls/s", ">= 20,000/s", mlbox_rate >= 20_000,
                "buffered sqlite3 executemany"))  # fmt: skip
        cpu_floor, cpu_mlbox = statistics.median(cpu["floor"]), statistics.median(cpu["mlbox"])
        add(Row("  the same in CPU seconds (all threads)", cpu_mlbox, cpu_floor, "s", "report", None, "xgboost.train"))
        # where mlbox train's time goes (median seconds per phase); the fit phase holds xgboost.train
        for phase, seconds in breakdown.items():
            floor_of = floor if phase == "fit" else None
            add(Row(f"  mlbox train phase: {phase}", seconds, floor_of, "s", "report", None, "xgboost.train" if floor_of else ""))
        db.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows
