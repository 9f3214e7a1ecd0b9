"""The worker's side of the prediction log: records buffered on the request path, shipped to a sidecar process.

Each serving worker starts one sidecar (`python -m mlbox.serve.predlog.sidecar`). A request only
appends its log record — and, when its deployment has a shadow, which model that is — to a
list. Every `interval` (50 ms) a sender thread ships the list down the sidecar's stdin as one
frame (wire.py); the sidecar writes the Parquet batches and runs the shadow models. So the
worker's event loop shares its GIL with nothing heavier than that one send, and a shadow model
that is slow, hogs a core or crashes onnxruntime cannot touch the answers (docs/serving.md).

Delivery is at least once: a shipped frame is kept until the sidecar reports it `durable`
(written, or dropped and counted). A sidecar that dies is started again within a second and
gets every frame the dead one had not written, so a sidecar's `kill -9` loses no answer's
record (one may then be logged twice), only the shadow answers it had not yet written. The sidecar exits when its stdin
closes, after running what it holds and flushing the log: on a clean shutdown, and also when
the worker is killed, so `kill -9` of a worker loses at most one `interval` of records.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from mlbox.serve.predlog.wire import Record, Shadows, encode_frame

log = logging.getLogger("mlbox.serve")
RESTART_SECONDS = 1.0


class Offload:
    """The worker's side of the log: buffers records (and their shadows), ships them to its sidecar, restarts it."""

    def __init__(
        self,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        interval: float = 0.05,
        max_rows: int = 200_000,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.command = command
        self.env = env
        self.interval = interval
        self.max_rows = max_rows
        self.on_error = on_error or (lambda message: log.warning("%s", message))
        self.dropped = 0  # records dropped here: the buffer was full
        self.restarts = 0
        self.acknowledged = 0  # records a sidecar has written
        self.remote: dict[str, Any] = {}  # the sidecar's latest counters
        self._finished: dict[str, Any] = {}  # counters of sidecars that have exited, summed
        self._records: list[Record] = []
        self._shadows: Shadows = []  # (index in _records, shadow model)
        self._unsent: deque[tuple[bytes, int]] = deque()  # (frame, records in it)
        self._unsent_rows = 0
        self._inflight: deque[tuple[int, bytes, int]] = deque()  # shipped, not yet written: (marker, frame, records)
        self._inflight_rows = 0
        self._sent = 0  # records shipped to the current sidecar: the marker it acknowledges with `durable`
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._next_start = 0.0
        self._sender = threading.Thread(target=self._run, name="mlbox-offload", daemon=True)

    # the request path -----------------------------------------------------------------------

    def append(self, record: Record, shadow: str | None = None) -> None:
        """Log `record`; with `shadow`, also run that model on its inputs and compare with its answer."""
        with self._lock:
            if len(self._records) + self._unsent_rows + self._inflight_rows >= self.max_rows:
                self.dropped += 1
                return
            if shadow is not None:
                self._shadows.append((len(self._records), shadow))
            self._records.append(record)

    # counters --------------------------------------------------------------------------------

    def counter(self, key: str) -> float:
        """A counter summed over every sidecar this worker has run."""
        return float(self._finished.get(key, 0)) + float(self.remote.get(key, 0))

    def shadow_counts(self) -> dict[str, dict[str, float]]:
        """deployment -> {"predictions", "disagreements", "errors"}, summed over every sidecar."""
        out: dict[str, dict[str, float]] = {}
        for source in (self._finished.get("shadow", {}), self.remote.get("shadow", {})):
            for deployment, counts in source.items():
                mine = out.setdefault(deployment, {"predictions": 0.0, "disagreements": 0.0, "errors": 0.0})
                for k, v in counts.items():
                    mine[k] = mine.get(k, 0.0) + float(v)
        return out

    @property
    def backlog(self) -> int:
        """Records not yet written: here, in the pipe or held by the sidecar, and the sidecar's own shadow records."""
        r = self.remote
        shadow_held = int(r.get("backlog", 0)) - (int(r.get("received", 0)) - int(r.get("durable", 0)))
        return len(self._records) + self._unsent_rows + self._inflight_rows + max(0, shadow_held)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn()
        self._sender.start()

    def close(self, timeout: float = 30) -> None:
        """Ship what is buffered, close the sidecar's stdin and wait for it to run and flush everything."""
        self._stop.set()
        if self._sender.is_alive():
            self._sender.join(timeout)
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.on_error(f"the serving sidecar did not finish in {timeout:.0f} s; killed")
            proc.kill()
            proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    def _spawn(self) -> None:
        self._next_start = time.monotonic() + RESTART_SECONDS
        # Its own session: a shutdown signal to the server's process group can reach the sidecar while it is
        # still importing, before it ignores signals, and lose everything it was about to write.
        proc = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env=self.env, start_new_session=True
        )
        self._proc = proc
        self._reader = threading.Thread(target=self._read, args=(proc,), name="mlbox-offload-stats", daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        last: dict[str, Any] = {}
        for line in proc.stdout:
            try:
                stats = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(stats, dict):
                continue
            last = stats
            if proc is self._proc:
                self.remote = stats
                self._acknowledge(int(stats.get("durable", 0)))
            if stats.get("error"):
                self.on_error(f"prediction log: {stats['error']}")
        self._finished = _summed(self._finished, last)  # this sidecar is gone: its counters stay
        if self.remote is last:
            self.remote = {}

    def _acknowledge(self, durable: int) -> None:
        """Forget the frames the sidecar has written; the others are sent again if it dies."""
        with self._lock:
            while self._inflight and self._inflight[0][0] <= durable:
                _, _, n = self._inflight.popleft()
                self._inflight_rows -= n
                self.acknowledged += n

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._ship()
        self._ship(final=True)

    def _ship(self, final: bool = False) -> None:
        with self._lock:
            records, self._records = self._records, []
            shadows, self._shadows = self._shadows, []
        if records:
            frame = encode_frame(records, shadows)
            with self._lock:
                self._unsent.append((frame, len(records)))
                self._unsent_rows += len(records)
                while self._unsent_rows > self.max_rows and len(self._unsent) > 1:  # no sidecar for a long while
                    _, n = self._unsent.popleft()
                    self._unsent_rows -= n
                    self.dropped += n
        if not self.alive:
            if final or time.monotonic() < self._next_start:
                return
            code = None if self._proc is None else self._proc.returncode
            self.on_error(f"the serving sidecar exited (status {code}); starting a new one")
            self.restarts += 1
            with self._lock:  # what the dead one had not written goes to the new one, first
                self._unsent.extendleft((frame, n) for _, frame, n in reversed(self._inflight))
                self._unsent_rows += self._inflight_rows
                self._inflight.clear()
                self._inflight_rows = 0
                self._sent = 0
            self._spawn()
        while self._unsent:
            frame, n = self._unsent[0]
            if not self._write(frame):
                return
            with self._lock:
                self._unsent.popleft()
                self._unsent_rows -= n
                self._sent += n
                self._inflight.append((self._sent, frame, n))
                self._inflight_rows += n

    def _write(self, frame: bytes) -> bool:
        assert self._proc is not None and self._proc.stdin is not None
        fd, view = self._proc.stdin.fileno(), memoryview(frame)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:  # the sidecar died: this frame goes to the next one, whole
            return False
        return True


def _summed(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict):
            out[key] = _summed(out.get(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("backlog", "received", "durable"):
            out[key] = out.get(key, 0) + value
    return out
