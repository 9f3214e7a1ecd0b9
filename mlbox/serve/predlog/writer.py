"""The prediction log's Parquet writer: every request's inputs, outputs, model, variant and latency, as Parquet batches.

Records arrive in a list (bounded: past `max_rows` new records are dropped and counted, never
blocking). A background thread turns that list into Arrow record batches every 50 ms — small,
even pieces of work — and every `flush_seconds` writes what it holds as
`predictions/<deployment>/<date>/<uuid>.parquet` (through mlbox.store.crypt: encrypted in an
encrypted box): temporary name, fsync, catalog row in meta.db and rename in one transaction.
Each deployment's file is written on its own, so one that fails never makes another's records
be written twice. It flushes once more on close.

Given `signature_of` (model reference → its Signature), each file also carries the typed
columns of `mlbox.flavors.logged` (`n.<feature>`, `c.<feature>`, `y.<output>`), computed at
flush in DuckDB, off the request path, so that monitoring reads columns instead of JSON. A model
whose signature cannot be had is written without them (monitoring reads its JSON instead).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlbox import clock
from mlbox.flavors.logged import typed_sql
from mlbox.flavors.signature import Signature
from mlbox.serve.predlog.wire import Record
from mlbox.store import crypt
from mlbox.store.sqlite import Database

COMPACT_SECONDS = 0.05


def schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("ts", pa.timestamp("us", tz="UTC")),
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


class PredictionLog:
    """The Parquet writer: records in, Arrow batches every 50 ms, one cataloged Parquet file per deployment per flush."""

    def __init__(
        self,
        root: Path,
        db: Database,
        *,
        flush_seconds: float = 1.0,
        max_rows: int = 200_000,
        on_error: Callable[[BaseException], None] | None = None,
        on_flush: Callable[[], None] | None = None,
        signature_of: Callable[[str], Signature | None] | None = None,
    ) -> None:
        self.root = root
        self.signature_of = signature_of
        self._duck: Any = None  # one in-memory DuckDB connection for the typed columns, used under _lock
        self.db = db
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.dropped = 0
        self.written = 0
        self._pending: list[Record] = []
        self._batches: list[Any] = []  # pyarrow RecordBatches not yet written
        self._held = 0  # rows in _batches
        self._lock = threading.Lock()  # one compaction or flush at a time
        self._swap = threading.Lock()  # guards _pending; held for microseconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_error = on_error
        self._on_flush = on_flush
        self.durable = 0  # the largest `extend` marker whose records are all written (or dropped)
        self._marker = 0  # the latest `extend` marker
        self._compacted = 0  # the marker at the last compaction

    @property
    def backlog(self) -> int:
        return len(self._pending) + self._held

    def append(self, record: Record) -> None:
        """Queue one record; never blocks on I/O."""
        with self._swap:
            if len(self._pending) + self._held >= self.max_rows:
                self.dropped += 1
                return
            self._pending.append(record)

    def extend(self, records: list[Record], marker: int | None = None) -> None:
        """Queue many records; past the bound the rest are dropped and counted.

        `marker` (a count that only grows) comes back as `durable` once these records are written.
        """
        with self._swap:
            room = max(0, self.max_rows - len(self._pending) - self._held)
            self._pending.extend(records[:room])
            self.dropped += max(0, len(records) - room)
            if marker is not None:
                self._marker = marker

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlbox-predlog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_seconds
        while not self._stop.wait(COMPACT_SECONDS):
            try:
                self.compact()
                if time.monotonic() >= next_flush:
                    next_flush = time.monotonic() + self.flush_seconds
                    self.flush()
            except Exception as exc:  # disk full or locked catalog: keep serving, retry next tick
                if self._on_error:
                    self._on_error(exc)

    def compact(self) -> None:
        """Turn pending tuples into one Arrow record batch."""
        import pyarrow as pa

        with self._lock:
            with self._swap:
                rows, self._pending = self._pending, []
                self._compacted = self._marker
            if not rows:
                return
            columns = list(zip(*rows, strict=True))
            sch = schema()
            arrays = [
                pa.array((np.array(columns[0], dtype=np.float64) * 1e6).astype(np.int64)).cast(sch.field("ts").type),
                *(pa.array(col, sch.field(i + 1).type) for i, col in enumerate(columns[1:])),
            ]
            batch = pa.RecordBatch.from_arrays(arrays, schema=sch)
            with self._swap:
                self._batches.append(batch)
                self._held += batch.num_rows

    def flush(self) -> int:
        """Write everything held, one file per deployment; returns the number of records written.

        Each deployment's file is written on its own: one that fails keeps its records for the
        next flush, and the others are written once, never again (no duplicates in the log).
        The first failure is raised after every other deployment's file is written.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        self.compact()
        with self._lock:
            with self._swap:
                batches, self._batches = self._batches, []
                self._held = 0
                marker = self._compacted
            if not batches:
                self.durable = marker
                return 0
            table = pa.Table.from_batches(batches)
            deployments = table.column("deployment")
            parts = [(str(d), table.filter(pc.equal(deployments, d))) for d in pc.unique(deployments).to_pylist()]
            failed: list[Any] = []
            error: Exception | None = None
            written = 0
            try:
                while parts:
                    deployment, part = parts[0]
                    try:
                        self._write(deployment, part)
                    except Exception as exc:  # disk full, a bad folder, a locked catalog: this deployment only
                        failed.append(part)
                        error = error or exc
                    else:
                        written += part.num_rows
                        self.written += part.num_rows
                    parts.pop(0)
            finally:
                kept = [b for part in [*failed, *(p for _, p in parts)] for b in part.to_batches() if b.num_rows]
                if kept:
                    with self._swap:  # for the next flush, ahead of anything newer
                        self._batches[:0] = kept
                        self._held += sum(b.num_rows for b in kept)
            if error is not None:
                raise error
            self.durable = marker  # everything up to `marker` is written: the worker may forget it
        if self._on_flush:
            self._on_flush()
        return written

    def _write(self, deployment: str, table: Any) -> None:
        import pyarrow.compute as pc

        table = self._typed(table)
        first, last = pc.min_max(table.column("ts")).values()
        day = first.as_py().strftime("%Y-%m-%d")
        folder = self.root / deployment / day
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = folder / f".tmp-{os.getpid()}-{name}.parquet"
        final = folder / f"{name}.parquet"
        renamed = False
        try:
            crypt.write_table(table, tmp, compression="snappy")  # encrypted when the box is
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            with self.db.atomic():  # the catalog row and the file appear together, or neither does
                self.db.execute(
                    "INSERT INTO prediction_batches (deployment, path, rows, min_ts, max_ts, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (deployment, str(final.relative_to(self.root.parent)), table.num_rows, clock.iso(first.as_py()),
                     clock.iso(last.as_py()), clock.iso()),
                )  # fmt: skip
                os.rename(tmp, final)
                renamed = True
        except BaseException:
            tmp.unlink(missing_ok=True)
            if renamed:  # the commit failed after the rename: no file without its catalog row
                final.unlink(missing_ok=True)
            raise

    def _typed(self, table: Any) -> Any:
        """`table` with the typed columns of each record's model appended (records regrouped by model)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.signature_of is None:
            return table
        parts = []
        models = table.column("model")
        for ref in pc.unique(models).to_pylist():
            part = table.filter(pc.equal(models, ref))
            try:
                signature = self.signature_of(str(ref))
                if signature is not None:
                    if self._duck is None:
                        import duckdb

                        self._duck = duckdb.connect(":memory:", config={"threads": 1})
                        self._duck.execute("SET TimeZone = 'UTC'")
                    self._duck.register("__records", part)
                    try:
                        typed = self._duck.sql(typed_sql(signature, "__records")).to_arrow_table()
                    finally:
                        self._duck.unregister("__records")
                    for name in typed.column_names:
                        part = part.append_column(name, typed.column(name))
            except Exception as exc:  # never lose records over their typed copy: monitoring reads the JSON
                if self._on_error:
                    self._on_error(RuntimeError(f"typed log columns for {ref}: {exc}"))
            parts.append(part)
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="default")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception as exc:
            if self._on_error:
                self._on_error(exc)
        if self._duck is not None:
            self._duck.close()
            self._duck = None
