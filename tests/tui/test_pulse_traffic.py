"""Pulse's sparklines: requests/s, error rate and p99 per deployment over the last minutes, from the prediction log.

Records are written by the real prediction-log writer (as `mlbox serve` writes them) into a copy of
the TUI box; the expected series are computed here from the same records with numpy, independently
of the DuckDB query the client runs. The clock is fixed, so the window's buckets are known.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from textual.pilot import Pilot
from textual.widgets import Sparkline, Static

from mlbox import clock
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.tui.app import MlboxApp
from mlbox.tui.screens.pulse import DeploymentTraffic
from mlbox.console.traffic import BUCKET_S, BUCKETS

from ._pilot import drive, press
from .conftest import open_box

NOW = datetime(2026, 12, 2, 7, 0, 4, tzinfo=UTC)  # 4 s into a bucket: the window ends at 07:00:00
UNTIL = datetime(2026, 12, 2, 7, 0, 0, tzinfo=UTC).timestamp()
START = UNTIL - BUCKETS * BUCKET_S


def record(ts: float, i: int, *, variant: str = "primary", latency: float = 5.0, error: str | None = None) -> Record:
    model = {"primary": "churn:1", "canary": "churn:2", "shadow": "churn:2"}[variant]
    outputs = None if error else orjson.dumps([{"0": 0.4, "1": 0.6}]).decode()
    return Record(ts, f"req-{i:05d}", "churn_api", model, variant, variant == "shadow", latency, None,
                  orjson.dumps([{"x0": 0.1, "x1": 0.2, "x2": 0.3}]).decode(), outputs, error)  # fmt: skip


def logged(rng: np.random.Generator) -> list[Record]:
    """Traffic in some buckets of the window, with errors, canary and shadow records, and records just outside it."""
    out: list[Record] = []
    for bucket in (0, 3, 4, 17, 28, 29):
        for j in range(int(rng.integers(3, 40))):
            ts = START + bucket * BUCKET_S + float(rng.uniform(0, BUCKET_S - 0.01))
            variant = "canary" if j % 4 == 0 else "primary"
            error = "ValidationError" if rng.random() < 0.2 else None
            out.append(record(ts, len(out), variant=variant, latency=float(rng.gamma(2.0, 4.0)), error=error))
            if j % 5 == 0:  # a shadow copy of the request: not served traffic
                out.append(record(ts, len(out), variant="shadow", latency=500.0))
    out.append(record(START - 0.5, len(out), latency=900.0))  # before the window
    out.append(record(UNTIL + 1.0, len(out), latency=900.0))  # in the bucket still open
    return out


def expected(records: list[Record]) -> tuple[list[float], list[float], list[float], list[int]]:
    """requests/s, error rate and p99 (numpy's linear percentile) per bucket, from the records themselves."""
    rps, err, p99, counts = [], [], [], []
    for b in range(BUCKETS):
        lo, hi = START + b * BUCKET_S, START + (b + 1) * BUCKET_S
        mine = [r for r in records if lo <= r.ts < hi and not r.shadow]
        counts.append(len(mine))
        rps.append(len(mine) / BUCKET_S)
        err.append(sum(r.error is not None for r in mine) / len(mine) if mine else 0.0)
        p99.append(float(np.percentile([r.latency_ms for r in mine], 99)) if mine else 0.0)
    return rps, err, p99, counts


def write_log(home: Path, records: list[Record]) -> None:
    with open_box(home) as box:
        writer = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
        for part in (records[: len(records) // 2], records[len(records) // 2 :]):  # two files, as two flushes make
            writer.extend(part)
            writer.flush()
        writer.close()


def shown(app: MlboxApp) -> dict[str, Any]:
    (block,) = app.screen.query(DeploymentTraffic)
    sparks = list(block.query(Sparkline))
    return {
        "data": [list(s.data or []) for s in sparks],
        "words": [str(w.render()) for w in block.query(".spark-value").results(Static)],
        "labels": [str(w.render()) for w in block.query(".spark-label").results(Static)],
    }


def test_pulse_draws_the_deployments_recent_traffic_from_its_prediction_log(
    tui_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = logged(np.random.default_rng(3))
    write_log(tui_home, records)
    monkeypatch.setattr(clock, "now", lambda: NOW)
    seen: dict[str, Any] = {}

    later = [record(UNTIL - 2.0 + k / 10, 90_000 + k, latency=40.0 + k, error="E" if k < 3 else None) for k in range(10)]

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        seen.update(shown(app))
        block = app.screen.query_one(DeploymentTraffic)
        write_log(tui_home, later)  # a file lands in the window while the screen runs
        await press(pilot, "r")
        seen["after"] = shown(app)
        seen["same block"] = app.screen.query_one(DeploymentTraffic) is block  # updated in place, not rebuilt

    drive(tui_home, script, size=(80, 24))
    rps, err, p99, counts = expected(records)
    assert sum(counts) > 50 and counts[-1] > 0  # the newest bucket has traffic: its words are numbers
    assert seen["labels"] == ["req/s", "err", "p99"]
    assert seen["data"][0] == pytest.approx(rps) and seen["data"][1] == pytest.approx(err)
    assert seen["data"][2] == pytest.approx(p99, rel=1e-9)
    assert seen["words"] == [f"{rps[-1]:.3g}/s", f"{err[-1]:.1%}", f"{p99[-1]:.3g} ms"]
    rps, err, p99, _ = expected(records + later)
    assert seen["after"]["data"] == [pytest.approx(rps), pytest.approx(err), pytest.approx(p99, rel=1e-9)]
    assert seen["after"]["words"] == [f"{rps[-1]:.3g}/s", f"{err[-1]:.1%}", f"{p99[-1]:.3g} ms"]
    assert seen["after"]["data"] != seen["data"] and seen["same block"]


def test_a_deployment_without_logged_traffic_draws_flat_lines_and_dashes(
    tui_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clock, "now", lambda: NOW)
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        seen.update(shown(app))

    drive(tui_home, script)
    assert seen["data"] == [[0.0] * BUCKETS] * 3
    assert seen["words"] == ["0/s", "0.0%", "–"]
