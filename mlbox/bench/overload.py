"""`mlbox bench serve --overload`: admission under a flood at 2x capacity, against a real `mlbox serve`.

The box of `mlbox bench serve` (a primary, a 10% canary and a shadow, prediction logging
on) is served by one worker on a free loopback port. Each round measures the unloaded p99
(closed loop, one connection), the capacity (closed loop at CAPACITY_CONCURRENCY, answers
that are 200 per second), then floods the server open-loop at FLOOD_FACTOR x that capacity
for the same time: request i is due at i/rate whatever the server does, and its latency
counts from when it was due. Reported, each the median of its rounds: the admitted p99
over the unloaded p99 (target <= 2), the share answered 429, and other errors (target 0,
summed). `serve.max_queue_ms` is the latency budget the server admits by: the bench sets
it (`--queue-ms`) as a latency-sensitive deployment would.
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
from pathlib import Path
from typing import Any

from mlbox.bench.report import Recorder, Row
from mlbox.bench.serve import Prepared, ServeScale, load, prepare
from mlbox.config import child_env
from mlbox.serve import process as server

CAPACITY_CONCURRENCY = 2  # one request served while the next waits: keeps one worker busy, never over the bound
FLOOD_FACTOR = 2.0
PATH = "/v1/deployments/bench/predict"
DEFAULT_QUEUE_MS = 2.0
FULL = ServeScale(5.0, 200, 3)
QUICK = ServeScale(1.0, 20, 3)  # three short rounds: the figures are medians even in a smoke run


def flood(port: int, rate: float, seconds: float, body: Path, token: str) -> dict[str, Any]:
    """One open-loop run of the load generator at `rate` requests per second."""
    proc = subprocess.run(
        [sys.executable, "-m", "mlbox.bench.loadgen", str(port), PATH, "--rate", str(rate), str(seconds), str(body), token],
        capture_output=True, text=True, timeout=seconds + 90, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def ok_rps(run: dict[str, Any]) -> float:
    """Answers that were 200, per second, of a closed-loop run."""
    requests = int(run["requests"])
    return float(run["rps"]) * (requests - int(run["errors"])) / requests if requests else 0.0


def measure(ready: Prepared, work: Path, scale: ServeScale, queue_ms: float, rec: Recorder) -> list[dict[str, Any]]:
    """Start one `mlbox serve` worker admitting by `queue_ms`, run every round, stop it: one dict per round."""
    env = child_env(
        drop=("MLBOX_TOKEN",), BENTOML_DO_NOT_TRACK="True", BENTOML_HOME=str(work / "bentoml"), MLBOX_HOME=str(ready.home),
        MLBOX_SERVE_WORKERS="1", MLBOX_SERVE_MAX_QUEUE_MS=str(queue_ms),
    )  # fmt: skip
    rec.stage("starting mlbox serve")
    port = server.free_port()
    cmd = [sys.executable, "-m", "mlbox", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = server.start(cmd, env, port, work / "serve.log")
    try:
        time.sleep(1.0)
        rounds = []
        for turn in range(scale.rounds):
            rec.stage(f"round {turn + 1}/{scale.rounds}: unloaded")
            unloaded = load(port, PATH, 1, scale.seconds, ready.body, ready.token)
            rec.stage(f"round {turn + 1}/{scale.rounds}: capacity")
            capacity = load(port, PATH, CAPACITY_CONCURRENCY, scale.seconds, ready.body, ready.token)
            rate = FLOOD_FACTOR * ok_rps(capacity)
            rec.stage(f"round {turn + 1}/{scale.rounds}: flood at {rate:,.0f} req/s")
            flooded = flood(port, rate, scale.seconds, ready.body, ready.token)
            rounds.append({"unloaded": unloaded, "capacity": capacity, "flood": flooded})
        return rounds
    finally:
        server.stop(proc)


def overload_rows(rounds: list[dict[str, Any]], queue_ms: float, rec: Recorder) -> None:
    """Capacity, unloaded p99, admitted p99 / unloaded p99 (<= 2), the share shed and other errors (= 0): medians."""
    n = len(rounds)
    capacity = statistics.median(ok_rps(r["capacity"]) for r in rounds)
    unloaded = statistics.median(r["unloaded"]["p99_ms"] for r in rounds)
    admitted = statistics.median(r["flood"]["p99_ms"] for r in rounds)
    ratio = statistics.median(r["flood"]["p99_ms"] / r["unloaded"]["p99_ms"] for r in rounds)
    shed = statistics.median(r["flood"]["shed"] / max(1, r["flood"]["requests"]) for r in rounds)
    served = statistics.median(r["flood"]["ok_rps"] for r in rounds)
    errors = sum(r["flood"]["errors"] + r["unloaded"]["errors"] + r["capacity"]["errors"] for r in rounds)
    rate = statistics.median(r["flood"]["rate"] for r in rounds)
    shed_p99 = statistics.median(r["flood"]["shed_p99_ms"] for r in rounds)
    rec.add(Row(f"capacity: closed loop, c={CAPACITY_CONCURRENCY} (median of {n} rounds)", capacity, None, "req/s", "report", None))
    rec.add(Row(f"unloaded p99, c=1 (median of {n} rounds)", unloaded, None, "ms", "report", None))
    rec.add(Row(f"flood at {FLOOD_FACTOR:g}x capacity ({rate:,.0f} req/s open loop, serve.max_queue_ms {queue_ms:g}): "
                f"admitted p99 {admitted:.2f} ms = {ratio:.2f}x unloaded p99, {served:,.0f} req/s admitted (median of {n} rounds)",
                ratio, None, "x unloaded p99", "<= 2", ratio <= 2.0))  # fmt: skip
    rec.add(Row(f"flood: share answered 429 with Retry-After (median of {n} rounds)", 100 * shed, None, "%", "report", None))
    # a 429 answered from the request head runs no app code: its latency is what the flood itself costs this machine
    # (client, kernel, scheduling), the floor under any admitted request's
    rec.add(Row(f"flood: p99 of the 429s, the flood's own floor; mlbox is the admitted p99 (median of {n} rounds)", admitted,
                shed_p99, "ms", "report", None, "429 p99"))  # fmt: skip
    rec.add(Row(f"flood and closed loops: answers neither 200 nor 429, or none (sum of {n} rounds)", float(errors), None,
                "errors", "= 0", errors == 0))  # fmt: skip


def run(
    scale: ServeScale, queue_ms: float = DEFAULT_QUEUE_MS, on_row: Callable[[Row], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> list[Row]:  # fmt: skip
    rec = Recorder(on_row, on_stage)
    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-overload-"))
    try:
        rec.stage("training three models")
        ready = prepare(work, scale)
        overload_rows(measure(ready, work, scale, queue_ms, rec), queue_ms, rec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows
