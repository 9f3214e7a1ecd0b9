"""Real prediction-log and label Parquet files for the quality, A/B and serving-statistics tests.

Log files use the writer's exact Arrow schema (`mlbox.serve.predlog.writer.schema`); label
files the columns `labels ingest` writes (`request_id`, `row`, `label`, `predicted_at`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlbox.serve.predlog.writer import schema

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@dataclass
class Rec:
    """One logged record; `outputs` a list (one element per row) or None for a failed request."""

    request_id: str
    outputs: list[Any] | None
    variant: str = "primary"
    model: str = "m:1"
    ts: datetime = T0
    latency_ms: float = 1.0
    error: str | None = None
    inputs: list[dict[str, Any]] | None = None

    @property
    def shadow(self) -> bool:
        return self.variant == "shadow"


def write_log(path: Path, records: list[Rec], extra: dict[str, pa.Array] | None = None) -> Path:
    """A log file in the writer's schema (plus `extra` typed columns, as newer files carry)."""
    n = len(records)
    inputs = [json.dumps(r.inputs if r.inputs is not None else [{"a": 1.0}] * len(r.outputs or [None])) for r in records]
    columns: dict[str, Any] = {
        "ts": pa.array([r.ts for r in records], pa.timestamp("us", tz="UTC")),
        "request_id": [r.request_id for r in records],
        "deployment": ["d"] * n,
        "model": [r.model for r in records],
        "variant": [r.variant for r in records],
        "shadow": [r.shadow for r in records],
        "latency_ms": [r.latency_ms for r in records],
        "entity": [None] * n,
        "inputs": inputs,
        "outputs": [None if r.outputs is None else json.dumps(r.outputs) for r in records],
        "error": [r.error for r in records],
    }
    table = pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema()}, schema=schema())
    for name, values in (extra or {}).items():
        table = table.append_column(name, values)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy")
    return path


def write_labels(path: Path, rows: list[tuple[str, int | None, Any]], label_type: pa.DataType | None = None) -> Path:
    """A label batch: (request_id, row or None, label) per line."""
    table = pa.table(
        {
            "request_id": pa.array([r[0] for r in rows], pa.string()),
            "row": pa.array([r[1] for r in rows], pa.int32()),
            "label": pa.array([r[2] for r in rows], label_type),
            "predicted_at": pa.array([T0] * len(rows), pa.timestamp("us", tz="UTC")),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def probs(p: float, classes: tuple[str, ...] = ("no", "yes")) -> dict[str, float]:
    """A binary classifier's logged output for P(classes[1]) = p, rounded like the server's 6 decimals."""
    return {classes[0]: round(1 - p, 6), classes[1]: round(p, 6)}


def labelled_frame(
    rng: np.random.Generator, n: int, accuracy: float, *, variant: str, model: str, classes: tuple[str, ...] = ("no", "yes")
) -> pd.DataFrame:
    """A `labelled_rows`-shaped frame of n labelled binary rows whose top class is right with probability `accuracy`."""
    truth = rng.integers(0, 2, n)
    right = rng.random(n) < accuracy
    top = np.where(right, truth, 1 - truth)
    confidence = 0.5 + rng.random(n) * 0.5
    p_yes = np.where(top == 1, confidence, 1 - confidence)
    return pd.DataFrame(
        {
            "ts": pd.Series([T0 + timedelta(seconds=i) for i in range(n)], dtype="datetime64[us, UTC]"),
            "variant": variant,
            "model": model,
            "request_id": [f"{variant}-{i}" for i in range(n)],
            "row": 0,
            "prediction": [json.dumps(probs(float(p), classes)) for p in p_yes],
            "label": [classes[t] for t in truth],
        }
    )


def regression_frame(rng: np.random.Generator, n: int, noise: float, *, variant: str, model: str) -> pd.DataFrame:
    """A `labelled_rows`-shaped regression frame: label y ~ N(0, 1), prediction y + N(0, noise)."""
    y = rng.normal(size=n)
    return pd.DataFrame(
        {
            "ts": pd.Series([T0] * n, dtype="datetime64[us, UTC]"),
            "variant": variant,
            "model": model,
            "request_id": [f"{variant}-{i}" for i in range(n)],
            "row": 0,
            "prediction": [repr(float(v)) for v in y + rng.normal(scale=noise, size=n)],
            "label": [repr(float(v)) for v in y],
        }
    )
