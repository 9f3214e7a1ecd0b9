"""The sidecar process of a serving worker: frames in, Parquet batches and shadow predictions out.

`python -m mlbox.serve.predlog.sidecar HOME THREADS FLUSH_SECONDS MAX_ROWS`, started by each
worker (worker.py), never by hand. It reads frames on stdin and writes its counters as one JSON
line on stdout every half second and after each flush (everything else it prints goes to
stderr, the server's log). It exits when stdin closes, after running the queued shadows and
flushing; SIGINT and SIGTERM are ignored so that a Ctrl-C or a shutdown of the server's process
group cannot cut the final flush short. It runs at background priority (`background()`): its work can
wait, the answers cannot.
"""

from __future__ import annotations

import signal

if __name__ == "__main__":
    # Before the imports below (a second or more on a loaded machine): BentoML stops a worker's
    # children with SIGTERM, and one arriving mid-import would lose every record not yet written.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

from mlbox.flavors.signature import Signature
from mlbox.serve.predlog.wire import Record, read_frames
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.serve.runtime import ModelCache
from mlbox.serve.shadow import ShadowItem, ShadowWorker

log = logging.getLogger("mlbox.serve")
REPORT_SECONDS = 0.5
LOG_EVERY_SECONDS = 10.0
RETRY_LOAD_SECONDS = 10.0  # a shadow model that failed to load is tried again after this long


class Sidecar:
    """The sidecar's loop: frames from the worker in; records to the writer, shadows run, counters reported."""

    def __init__(self, predlog: PredictionLog, models: ModelCache, report: Callable[[bytes], object]) -> None:
        self.predlog = predlog
        self.models = models
        self.report = report
        self.shadow = ShadowWorker(self._shadow_result)
        self.counts: dict[str, dict[str, int]] = {}  # deployment -> predictions, disagreements, errors
        self.error: str | None = None
        self.received = 0  # records from the worker so far; `durable` in the stats says how many are written
        self._send_lock = threading.Lock()
        self._logged: dict[str, float] = {}  # message -> when it may be logged again
        self._unloadable: dict[str, float] = {}  # shadow model -> when to try loading it again
        self._stop = threading.Event()
        self._reporter = threading.Thread(target=self._report_loop, name="mlbox-sidecar-report", daemon=True)

    def run(self, stream: IO[bytes]) -> None:
        """Until `stream` closes; then run what is queued, flush the log and report once more."""
        self.predlog.start()
        self.shadow.start()
        self._reporter.start()
        try:
            for records, shadows in read_frames(stream):
                self.received += len(records)
                self.predlog.extend(records, self.received)
                for index, ref in shadows:
                    self._offer(records[index], ref)
        finally:
            self.shadow.close()
            self.predlog.close()
            self._stop.set()
            self._reporter.join(5)
            self.send()

    def _offer(self, record: Record, ref: str) -> None:
        now = time.monotonic()
        blocked = self._unloadable.get(ref, 0.0) > now
        try:
            if blocked:
                raise RuntimeError("it failed to load a moment ago")
            model = self.models.get(ref)
            answer = orjson.loads(record.outputs or "[]")
        except Exception as exc:  # an unloadable shadow is counted, never fatal; tried again after a while
            if not blocked:
                self._unloadable[ref] = now + RETRY_LOAD_SECONDS
            self._count(record.deployment, "errors")
            self._fail(f"shadow {ref} could not be loaded: {exc}")
            return
        self._unloadable.pop(ref, None)
        self.shadow.offer(ShadowItem(record.deployment, model, record.request_id, record.inputs, answer, record.entity))

    def stats(self) -> dict[str, Any]:
        # counts first: a shadow record is logged before it is counted, so the backlog read after
        # them includes every record they count
        shadow = {deployment: dict(counts) for deployment, counts in list(self.counts.items())}
        return {
            "shadow": shadow, "written": self.predlog.written, "dropped": self.predlog.dropped,
            "backlog": self.predlog.backlog, "shadow_dropped": self.shadow.dropped, "error": self.error,
            "received": self.received, "durable": self.predlog.durable,
        }  # fmt: skip

    def _count(self, deployment: str, key: str) -> None:
        counts = self.counts.setdefault(deployment, {"predictions": 0, "disagreements": 0, "errors": 0})
        counts[key] += 1

    def _fail(self, message: str) -> None:
        """Report `message` on the next stats line; log it, once per distinct message per LOG_EVERY_SECONDS."""
        self.error = message
        now = time.monotonic()
        if self._logged.get(message, 0.0) <= now:
            if len(self._logged) > 1000:
                self._logged.clear()
            self._logged[message] = now + LOG_EVERY_SECONDS
            log.warning("%s", message)

    def _shadow_result(self, item: ShadowItem, outputs: list[Any] | None, agree: bool, latency_ms: float, error: str | None) -> None:
        if error is not None:
            self._count(item.deployment, "errors")
            self._fail(f"shadow {item.model.ref} failed: {error}")
            return
        self.predlog.append(Record(
            ts=time.time(), request_id=item.request_id, deployment=item.deployment, model=item.model.ref, variant="shadow",
            shadow=True, latency_ms=latency_ms, entity=item.entity, inputs=item.rows, outputs=orjson.dumps(outputs).decode(),
            error=None,
        ))  # fmt: skip
        if not agree:
            self._count(item.deployment, "disagreements")
        self._count(item.deployment, "predictions")

    def _report_loop(self) -> None:
        while not self._stop.wait(REPORT_SECONDS):
            self.send()

    def send(self) -> None:
        """One line of counters to the worker (every REPORT_SECONDS, and after each flush)."""
        with self._send_lock:
            try:
                self.report(orjson.dumps(self.stats()) + b"\n")
            except OSError:  # the worker is gone; the log is still flushed
                pass
            self.error = None


class Signatures:
    """Model reference → Signature, read once per version (versions are immutable) for the log's typed columns."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._known: dict[str, Signature | None] = {}

    def get(self, ref: str) -> Signature | None:
        if ref not in self._known:
            try:
                self._known[ref] = Signature.from_dict(self.registry.get(ref).signature)
            except Exception:  # not in this box's registry (a test's records): written without typed columns
                self._known[ref] = None
        return self._known[ref]


NICE = 19  # the lowest priority there is: background work yields the CPU to the worker it serves
AUTOGROUP_TRIES = 8  # about 1.8 s at most, for sidecars started at once by several workers


def background(proc: Path = Path("/proc/self")) -> list[str]:
    """Lower this process below the worker it serves; returns what could not be set (each is best effort).

    The sidecar has a session of its own (so no signal to the worker's group reaches it), and where the
    kernel groups processes by session (CONFIG_SCHED_AUTOGROUP, on by default) a session's nice is what
    weighs against the worker's: a plain nice(10) left the two sharing a core 50/50, and a worker pinned
    with its sidecar to one core then answered 1 request in 100 3 ms late at c=1 (docs/serving.md). So:
    the session's autogroup nice, the process's nice, and SCHED_IDLE, under which a waking worker
    preempts it at once. The threads it starts later inherit the last two.
    """
    missed = [] if (why := _lower_autogroup(proc)) is None else [f"autogroup: {why}"]
    os.setpriority(os.PRIO_PROCESS, 0, NICE)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError) as exc:  # not Linux
        missed.append(f"SCHED_IDLE: {exc}")
    return missed


def _lower_autogroup(proc: Path) -> str | None:
    """Set this session's autogroup nice to NICE; None when done, else why not."""
    if os.getsid(0) != os.getpid():  # not its own session (run by hand): the group is the caller's, left alone
        return "not a session leader"
    for attempt in range(AUTOGROUP_TRIES):
        try:
            (proc / "autogroup").write_text(f"{NICE}\n")
            return None
        except BlockingIOError:  # EAGAIN: the kernel takes one unprivileged change per 100 ms, machine-wide
            time.sleep(0.05 * (attempt + 1))
        except OSError as exc:  # no autogroup (a kernel without it): nothing groups the two apart then
            return str(exc.strerror or exc)
    return "busy (EAGAIN)"


def main(argv: list[str]) -> int:
    missed = background()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the counters
    home, threads, flush_seconds, max_rows = Path(argv[0]), int(argv[1]), float(argv[2]), int(argv[3])

    from mlbox.config import load_settings
    from mlbox.registry.store import Registry
    from mlbox.store.artifacts import ArtifactStore
    from mlbox.store.audit import AuditLog, load_or_create_key
    from mlbox.store.layout import BoxPaths, open_meta

    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] [mlbox-sidecar] %(message)s")
    if missed:
        log.debug("background priority: not set: %s", "; ".join(missed))
    # the worker's environment (its child): a master key given as {"$env": ...} resolves here as it did there
    settings = load_settings(home)
    paths = BoxPaths(settings.home)
    # the two services it needs, wired as mlbox.box.Box wires them (the box is a layer above serving)
    db = open_meta(paths, busy_timeout_ms=settings["store.busy_timeout_ms"], synchronous=settings["store.synchronous"],
                    reason=settings.home_reason, master_key=settings["encryption.master_key"])
    try:
        registry = Registry(db, ArtifactStore(paths.artifacts), AuditLog(db, load_or_create_key(paths.audit_key)))
        sidecar = Sidecar(
            PredictionLog(paths.predictions, db, flush_seconds=flush_seconds, max_rows=max_rows,
                          on_error=lambda exc: sidecar._fail(f"flush failed: {exc}"), on_flush=lambda: sidecar.send(),
                          signature_of=Signatures(registry).get),
            ModelCache(registry, threads),
            report.write,
        )  # fmt: skip
        sidecar.run(sys.stdin.buffer)
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
