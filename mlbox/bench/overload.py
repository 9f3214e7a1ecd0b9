"""`mlbox bench serve --overload`: admission under a flood at 2x capacity, against a real `mlbox serve`.

The box of `mlbox bench serve` (a primary, a 10% canary and a shadow, prediction logging
on) is served by one worker on a free loopback port. Each round measures the unloaded p99
(closed loop, one connection), the capacity (closed loop at CAPACITY_CONCURRENCY, answers
that are 200 per second), then runs the open-loop generator at LIGHT_FACTOR x that capacity
and floods the server with it at FLOOD_FACTOR x: request i is due at i/rate whatever the server
does, and its latency counts from when it was due. Reported, each the median of its rounds: the
admitted p99 over the unloaded p99 (target <= 2), the same over the open loop's light-load p99
(the same generator unloaded: on a VM it includes an idle vCPU's wake-up, which a closed loop
never sees), the share answered 429, and other errors (target 0, summed). `serve.max_queue_ms`
is the latency budget the server admits by: the bench sets it (`--queue-ms`) as a
latency-sensitive deployment would.

As load tests are run (wrk on another machine), the load generator does not share the
server's cores: with two or more usable CPUs, once the server is ready every thread of its
processes (BentoML's parent, the worker, the worker's prediction-log sidecar) is pinned with
`sched_setaffinity` to the first half of them, and the load generator to the other half
alone (sharing a core with the sidecar's shadow predictions, it sent 3-4 ms late at p99:
its own delay, counted as the server's). Every measure of every round runs under that one
pinning, so the ratio compares like with like; `pin=False` (`--no-pin`) or a single CPU
measures unpinned. Pinned, the flood busy-polls on its own CPU (as wrk2 does), so each request
leaves within microseconds of when it is due; unpinned, it sleeps between requests and sends up
to a millisecond late. The last row says which, and how late the load generator sent.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbox.bench.report import Recorder, Row
from mlbox.bench.serve import Prepared, ServeScale, load, prepare
from mlbox.config import child_env
from mlbox.serve import process as server

CAPACITY_CONCURRENCY = 2  # one request served while the next waits: keeps one worker busy, never over the bound
FLOOD_FACTOR = 2.0
LIGHT_FACTOR = 0.25  # the same open loop at a quarter of capacity: unloaded latency as the flood's generator sees it
PATH = "/v1/deployments/bench/predict"
DEFAULT_QUEUE_MS = 0.3  # a latency-sensitive budget: about one service time (docs/serving.md)
FULL = ServeScale(5.0, 200, 3)
QUICK = ServeScale(1.0, 20, 3)  # three short rounds: the figures are medians even in a smoke run


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the server's processes and the load generator ran on."""

    server: tuple[int, ...] = ()  # empty: nothing pinned
    client: tuple[int, ...] = ()
    why: str = ""

    def note(self) -> str:
        if not self.server:
            return f"cpu pinning: none ({self.why}): load generator and server share cpus {_cpus(self.client)}"
        return (f"cpu pinning: serving worker, BentoML's parent and prediction-log sidecar on cpu {_cpus(self.server)}; "
                f"load generator alone on cpu {_cpus(self.client)}")  # fmt: skip


def _cpus(cpus: tuple[int, ...]) -> str:
    return ",".join(map(str, cpus))


def plan(cpus: set[int], pin: bool) -> Pinning:
    """The server gets the first half of the usable CPUs, the load generator the rest; one CPU or `pin=False`: none."""
    ordered = tuple(sorted(cpus))
    if not pin:
        return Pinning(client=ordered, why="--no-pin")
    if len(ordered) < 2:
        return Pinning(client=ordered, why="one cpu usable")
    half = len(ordered) // 2
    return Pinning(server=ordered[:half], client=ordered[half:])


def _pin_process(pid: int, cpus: tuple[int, ...]) -> None:
    """Every thread of `pid` (sched_setaffinity on a pid moves only its main thread); threads it starts later inherit."""
    import psutil

    for thread in psutil.Process(pid).threads():
        try:
            os.sched_setaffinity(thread.id, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


@contextmanager
def pinned(serve_pid: int, pinning: Pinning) -> Iterator[None]:
    """Pin the ready server's processes and, through this thread (inherited by the load generators), the client."""
    if not pinning.server:
        yield
        return
    import psutil

    for pid in [serve_pid, *(child.pid for child in psutil.Process(serve_pid).children(recursive=True))]:
        _pin_process(pid, pinning.server)  # BentoML's parent, its worker(s), each worker's sidecar
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, pinning.client)  # this thread only: the load generators it starts inherit it
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def flood(port: int, rate: float, seconds: float, body: Path, token: str, spin: bool = False) -> dict[str, Any]:
    """One open-loop run of the load generator at `rate` requests per second (`spin`: busy-polling, on its own CPU)."""
    cmd = [sys.executable, "-m", "mlbox.bench.loadgen", str(port), PATH, "--rate", str(rate), str(seconds), str(body), token]
    proc = subprocess.run(
        cmd + ["--spin"] * spin,
        capture_output=True, text=True, timeout=seconds + 90, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def ok_rps(run: dict[str, Any]) -> float:
    """Answers that were 200, per second, of a closed-loop run."""
    requests = int(run["requests"])
    return float(run["rps"]) * (requests - int(run["errors"])) / requests if requests else 0.0


def measure(
    ready: Prepared, work: Path, scale: ServeScale, queue_ms: float, rec: Recorder, pinning: Pinning = Pinning()
) -> list[dict[str, Any]]:
    """Start one `mlbox serve` worker admitting by `queue_ms`, pin it, run every round, stop it: one dict per round."""
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
        with pinned(proc.pid, pinning):
            return rounds(port, ready, scale, rec, spin=bool(pinning.server))
    finally:
        server.stop(proc)


def rounds(port: int, ready: Prepared, scale: ServeScale, rec: Recorder, spin: bool = False) -> list[dict[str, Any]]:
    """Each round: unloaded p99, capacity, the open loop at LIGHT_FACTOR x that capacity, then the flood at
    FLOOD_FACTOR x it (`spin`: see loadgen.flood)."""
    done: list[dict[str, Any]] = []
    for turn in range(scale.rounds):
        rec.stage(f"round {turn + 1}/{scale.rounds}: unloaded")
        unloaded = load(port, PATH, 1, scale.seconds, ready.body, ready.token)
        rec.stage(f"round {turn + 1}/{scale.rounds}: capacity")
        capacity = load(port, PATH, CAPACITY_CONCURRENCY, scale.seconds, ready.body, ready.token)
        rec.stage(f"round {turn + 1}/{scale.rounds}: open loop at {LIGHT_FACTOR:g}x capacity")
        light = flood(port, LIGHT_FACTOR * ok_rps(capacity), scale.seconds, ready.body, ready.token, spin)
        rate = FLOOD_FACTOR * ok_rps(capacity)
        rec.stage(f"round {turn + 1}/{scale.rounds}: flood at {rate:,.0f} req/s")
        flooded = flood(port, rate, scale.seconds, ready.body, ready.token, spin)
        done.append({"unloaded": unloaded, "capacity": capacity, "light": light, "flood": flooded})
    return done


def overload_rows(rounds: list[dict[str, Any]], queue_ms: float, rec: Recorder, pinning: Pinning = Pinning()) -> None:
    """Capacity, unloaded p99, admitted p99 / unloaded p99 (<= 2), the share shed and other errors (= 0): medians."""
    n = len(rounds)
    capacity = statistics.median(ok_rps(r["capacity"]) for r in rounds)
    unloaded = statistics.median(r["unloaded"]["p99_ms"] for r in rounds)
    admitted = statistics.median(r["flood"]["p99_ms"] for r in rounds)
    ratio = statistics.median(r["flood"]["p99_ms"] / r["unloaded"]["p99_ms"] for r in rounds)
    shed = statistics.median(r["flood"]["shed"] / max(1, r["flood"]["requests"]) for r in rounds)
    served = statistics.median(r["flood"]["ok_rps"] for r in rounds)
    # a closed loop's 429 is the admission rule at work (a stall of the machine moves the mean service time), not
    # an error: its `errors` are every non-200, `shed` the 429s among them
    errors = sum(r["flood"]["errors"] + r["light"]["errors"]
                 + sum(r[k]["errors"] - r[k].get("shed", 0) for k in ("unloaded", "capacity")) for r in rounds)  # fmt: skip
    rate = statistics.median(r["flood"]["rate"] for r in rounds)
    shed_p99 = statistics.median(r["flood"]["shed_p99_ms"] for r in rounds)
    rec.add(Row(f"capacity: closed loop, c={CAPACITY_CONCURRENCY} (median of {n} rounds)", capacity, None, "req/s", "report", None))
    rec.add(Row(f"unloaded p99, c=1 (median of {n} rounds)", unloaded, None, "ms", "report", None))
    rec.add(Row(f"flood at {FLOOD_FACTOR:g}x capacity ({rate:,.0f} req/s open loop, serve.max_queue_ms {queue_ms:g}): "
                f"admitted p99 {admitted:.2f} ms = {ratio:.2f}x unloaded p99, {served:,.0f} req/s admitted (median of {n} rounds)",
                ratio, None, "x unloaded p99", "<= 2", ratio <= 2.0))  # fmt: skip
    # the same open-loop generator at a quarter of capacity: requests then find the worker idle, and on a VM an idle
    # vCPU's wake-up is part of every unloaded request's latency, which a closed loop (never idle) does not see
    light = statistics.median(r["light"]["p99_ms"] for r in rounds)
    light_ratio = statistics.median(r["flood"]["p99_ms"] / r["light"]["p99_ms"] for r in rounds)
    light_shed = statistics.median(r["light"]["shed"] / max(1, r["light"]["requests"]) for r in rounds)
    rec.add(Row(f"open loop at {LIGHT_FACTOR:g}x capacity, the flood's generator unloaded: p99 {light:.2f} ms, "
                f"{100 * light_shed:.2f}% answered 429; flood admitted p99 = {light_ratio:.2f}x it (median of {n} rounds)",
                light_ratio, None, "x open-loop unloaded p99", "report", None))  # fmt: skip
    rec.add(Row(f"flood: share answered 429 with Retry-After (median of {n} rounds)", 100 * shed, None, "%", "report", None))
    # a 429 answered from the request head runs no app code; its p99 is mostly the requests that arrived during a
    # stall of the machine, found a queue and were refused (docs/serving.md)
    rec.add(Row(f"flood: p99 of the 429s, the flood's own floor; mlbox is the admitted p99 (median of {n} rounds)", admitted,
                shed_p99, "ms", "report", None, "429 p99"))  # fmt: skip
    rec.add(Row(f"open and closed loops: answers neither 200 nor 429, or none (sum of {n} rounds)", float(errors), None,
                "errors", "= 0", errors == 0))  # fmt: skip
    # the client's own delay: how late the load generator sent (p99), not counted as the server's if small
    lag = statistics.median(max(r["flood"]["send_lag_p99_ms"], r["light"]["send_lag_p99_ms"]) for r in rounds)
    rec.add(Row(f"{pinning.note()}; the load generator sent p99 {lag:.2f} ms late", float(len(pinning.server)), None,
                "cpus for the server", "report", None))  # fmt: skip


def run(
    scale: ServeScale, queue_ms: float = DEFAULT_QUEUE_MS, on_row: Callable[[Row], None] | None = None,
    on_stage: Callable[[str], None] | None = None, *, pin: bool = True,
) -> list[Row]:  # fmt: skip
    """The overload rows; `pin` keeps the load generator off the server's CPUs where there are two or more."""
    rec = Recorder(on_row, on_stage)
    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-overload-"))
    try:
        rec.stage("training three models")
        ready = prepare(work, scale)
        pinning = plan(os.sched_getaffinity(0), pin)
        overload_rows(measure(ready, work, scale, queue_ms, rec, pinning), queue_ms, rec, pinning)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows
