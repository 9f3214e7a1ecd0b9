"""`ActiveRun`: the handle a script or notebook logs through, with buffered metric writes.

`log_metric` appends to an in-memory buffer (about a microsecond); the buffer is written
with one `executemany` when it holds `flush_rows` rows, when `flush_seconds` have passed
since the last write, and when the run ends. Leaving the `with` block marks the run
finished, failed (exception) or interrupted (Ctrl-C).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from mlbox.errors import UsageError
from mlbox.tracking.store import MetricRow, RunInfo, TrackingStore, clean_metric


class ActiveRun:
    """A running run. Use as a context manager, or call `end()`."""

    def __init__(self, store: TrackingStore, run_id: str, *, flush_rows: int = 5000, flush_seconds: float = 1.0) -> None:
        self.store = store
        self.id = run_id
        self._buffer: list[MetricRow] = []
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self._ended = False

    # logging ---------------------------------------------------------------
    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.store.update_json(self.id, "params", params)

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.store.update_json(self.id, "tags", tags)

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        """Record one value of a metric at `step` (buffered)."""
        if not isinstance(key, str) or not key or len(key) > 250:
            raise UsageError(f"invalid metric name {key!r}")
        now = time.time()
        self._buffer.append((self.id, key, int(step), clean_metric(value), now))
        if len(self._buffer) >= self._flush_rows or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        for key, value in metrics.items():
            self.log_metric(key, value, step)

    def log_artifact(self, path: str | Path, name: str | None = None) -> dict[str, Any]:
        return self.store.log_artifact(self.id, Path(path), name)

    def set(self, **fields: Any) -> None:
        """Set run fields: device, dataset_fingerprint, feature_views, code_rev, code_dirty."""
        self.store.set_fields(self.id, **fields)

    def flush(self) -> None:
        if self._buffer:
            rows, self._buffer = self._buffer, []
            self.store.write_metrics(rows)
        self._last_flush = time.monotonic()

    # lifecycle -------------------------------------------------------------
    def end(self, status: str = "finished", error: str | None = None) -> None:
        if self._ended:
            return
        self.flush()
        self.store.finish(self.id, status, error)
        self._ended = True

    def info(self) -> RunInfo:
        self.flush()
        return self.store.run(self.id)

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.end("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("interrupted", "interrupted by the user")
        else:
            self.end("failed", f"{exc_type.__name__}: {exc}")
