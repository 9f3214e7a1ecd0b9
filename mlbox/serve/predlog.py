"""The prediction log: every request's inputs, outputs, model, variant and latency, as Parquet batches.

Requests append to an in-memory buffer (bounded: past `max_rows` new records are dropped
and counted, never blocking a request). A background thread writes the buffer every
`flush_seconds` as `predictions/<deployment>/<date>/<uuid>.parquet` — temporary name,
fsync, rename, then a catalog row in meta.db — and once more on shutdown, so `kill -9`
loses at most one flush interval.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from datetime import UTC, datetime
from typing import Any

from mlbox import clock
from mlbox.store.sqlite import Database

SCHEMA_FIELDS = ("ts", "request_id", "deployment", "model", "variant", "shadow", "latency_ms", "entity", "inputs", "outputs", "error")


class PredictionLog:
    def __init__(
        self,
        root: Path,
        db: Database,
        *,
        flush_seconds: float = 1.0,
        max_rows: int = 200_000,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.root = root
        self.db = db
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.dropped = 0
        self.written = 0
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # one flush at a time
        self._swap = threading.Lock()  # guards the buffer itself; held for microseconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_error = on_error

    @property
    def backlog(self) -> int:
        return len(self._buffer)

    def append(self, record: dict[str, Any]) -> None:
        """Queue one record (a dict with SCHEMA_FIELDS, `ts` as epoch seconds); never blocks on I/O."""
        with self._swap:
            if len(self._buffer) >= self.max_rows:
                self.dropped += 1
                return
            self._buffer.append(record)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlbox-predlog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self._safe_flush()

    def _safe_flush(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # disk full or locked catalog: keep serving, retry next tick
            if self._on_error:
                self._on_error(exc)

    def flush(self) -> int:
        """Write everything buffered; returns the number of records written."""
        with self._lock:
            with self._swap:
                records, self._buffer = self._buffer, []
            if not records:
                return 0
            by_deployment: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in records:
                by_deployment[r["deployment"]].append(r)
            try:
                for deployment, rows in by_deployment.items():
                    self._write(deployment, rows)
            except BaseException:
                with self._swap:
                    self._buffer[:0] = records  # put them back in front; retried on the next flush
                raise
            self.written += len(records)
            return len(records)

    def _write(self, deployment: str, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for r in rows:  # formatting timestamps here keeps strftime off the request path
            r["ts"] = clock.iso(datetime.fromtimestamp(r["ts"], UTC)) if isinstance(r["ts"], float) else r["ts"]
        day = rows[0]["ts"][:10]
        folder = self.root / deployment / day
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = folder / f".tmp-{os.getpid()}-{name}.parquet"
        final = folder / f"{name}.parquet"
        table = pa.Table.from_pylist([{k: r.get(k) for k in SCHEMA_FIELDS} for r in rows], schema=schema())
        pq.write_table(table, tmp, compression="snappy")
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o444)
        with self.db.atomic():
            os.rename(tmp, final)
            self.db.execute(
                "INSERT INTO prediction_batches (deployment, path, rows, min_ts, max_ts, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (deployment, str(final.relative_to(self.root.parent)), len(rows), min(r["ts"] for r in rows),
                 max(r["ts"] for r in rows), clock.iso()),
            )  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._safe_flush()


def schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("ts", pa.string()),
            ("request_id", pa.string()),
            ("deployment", pa.string()),
            ("model", pa.string()),
            ("variant", pa.string()),
            ("shadow", pa.bool_()),
            ("latency_ms", pa.float64()),
            ("entity", pa.string()),
            ("inputs", pa.string()),
            ("outputs", pa.string()),
            ("error", pa.string()),
        ]
    )
