"""Batch scoring bench: `mlbox predict`'s core (read, encode, score, write) vs raw onnxruntime on the same batches.

A 20-feature XGBoost classifier is trained and registered in a scratch box; a Parquet file
of `rows` rows is scored by `serve.batch.score_file` (Parquet in, encoding through the
signature, the serving model's session, Parquet out, atomic rename) and, as the floor, the
same rows already encoded are passed to the same session's `run` in the same batches. Both
use the same onnxruntime threads; they take turns, and each figure is the median of the rounds.
"""

from __future__ import annotations


import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlbox.bench.report import Row, settle
from mlbox.bench.train import TrainScale, _make
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.security.osuser import effective_os_user
from mlbox.serve.batch import BATCH_ROWS, encode_batch, score_file
from mlbox.serve.runtime import LoadedModel, ModelCache
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

FLOOR = "onnxruntime session.run, pre-encoded"


@dataclass(frozen=True)
class BatchScale:
    rows: int  # rows scored per round
    trees: int
    rounds: int


FULL = BatchScale(1_000_000, 200, 3)
QUICK = BatchScale(20_000, 20, 3)


def _model(work: Path, scale: BatchScale, threads: int) -> LoadedModel:
    data = work / "train.parquet"
    _make(data, TrainScale(20_000, 20, scale.trees, 0))
    me = effective_os_user()
    box = Box.create(load_settings(work / "box", environ={}), me)
    try:
        spec = {"experiment": "bench", "task": "classification", "target": "y", "flavor": "xgboost",
                "data": {"path": str(data)}, "params": {"n_estimators": scale.trees, "max_depth": 6}, "device": "cpu"}  # fmt: skip
        version = train(parse_spec(spec, base_dir=work), store=None, tracking=box.tracking, registry=box.registry,
                        actor=me, register=True).version  # fmt: skip
        assert version is not None
        return ModelCache(box.registry, threads).get(version.ref)
    finally:
        box.close()


def _floor_round(model: LoadedModel, batches: list[np.ndarray]) -> float:
    session = model.session
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    for X in batches:
        session.run(None, {name: X})
    return time.perf_counter() - started


def run_batch_bench(quick: bool = False, on_stage: Callable[[str], None] | None = None, threads: int = 0) -> dict[str, Any]:
    """Rows/s of `mlbox predict`'s core and of raw `session.run` on the same batch; medians of alternating rounds.

    `threads` is onnxruntime's intra-op threads for both (0: every core, `mlbox predict`'s default).
    """
    import pyarrow.parquet as pq

    scale = QUICK if quick else FULL
    stage = on_stage or (lambda _m: None)
    threads = threads or os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-batch-"))
    try:
        stage("batch: training the model")
        model = _model(work, scale, threads)
        stage(f"batch: generating {scale.rows:,} rows")
        source = work / "score.parquet"
        _make(source, TrainScale(scale.rows, 20, 0, 0))
        batches = [
            np.ascontiguousarray(encode_batch(model.signature, b), dtype=np.float32)
            for b in pq.ParquetFile(source).iter_batches(batch_size=BATCH_ROWS)
        ]
        score_file(model, source, work / "warm.parquet")  # warm-up: first-run allocations out of the figures
        _floor_round(model, batches)
        ours: list[float] = []
        floor: list[float] = []
        for turn in range(scale.rounds):
            stage(f"batch: round {turn + 1}/{scale.rounds}")
            settle()
            floor.append(_floor_round(model, batches))
            settle()
            started = time.perf_counter()
            score_file(model, source, work / "scored.parquet")
            ours.append(time.perf_counter() - started)
            (work / "scored.parquet").unlink()
        mlbox_rps = scale.rows / statistics.median(ours)
        floor_rps = scale.rows / statistics.median(floor)
        return {
            "name": "batch scoring (mlbox predict core)", "rows": scale.rows, "trees": scale.trees,
            "batch_rows": BATCH_ROWS, "threads": threads, "rounds": scale.rounds,
            "mlbox_rows_per_s": mlbox_rps, "floor_rows_per_s": floor_rps, "floor": FLOOR,
            "ratio": floor_rps / mlbox_rps,  # how many times slower than the floor
        }  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def batch_row(result: dict[str, Any]) -> Row:
    """The result as a row of a bench report (no target: the issue asks for the figure, not a bound)."""
    return Row(
        name=f"mlbox predict, {result['rows']:,} rows, {result['threads']} thread(s)",
        mlbox=result["mlbox_rows_per_s"], floor=result["floor_rows_per_s"], unit="rows/s", target="report",
        ok=None, floor_name=FLOOR,
    )  # fmt: skip
