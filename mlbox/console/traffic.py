"""A deployment's recent traffic from its prediction log, bucket by bucket: Pulse's requests/s, error rate and p99.

Only the log files whose cataloged time range meets the window are scanned (the same pruning as
`mlbox monitor`), by an in-memory DuckDB that aggregates per bucket, so a refresh reads a few
minutes of the log, never the whole of it, and no row comes into Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlbox.store.sqlite import Database

BUCKETS = 30
BUCKET_S = 10  # 30 buckets of 10 s: the last five minutes


@dataclass(frozen=True)
class Traffic:
    """One deployment's served requests (shadow copies left out) in equal buckets, oldest first, ending at `until`."""

    until: datetime  # the end of the newest complete bucket
    bucket_s: int
    requests: list[int]
    errors: list[int]
    p99_ms: list[float | None]  # None for a bucket without requests

    @property
    def rps(self) -> list[float]:
        return [n / self.bucket_s for n in self.requests]

    @property
    def error_rate(self) -> list[float]:
        """Errors over requests per bucket; 0 where there were no requests (nothing failed)."""
        return [e / n if n else 0.0 for e, n in zip(self.errors, self.requests, strict=True)]


def window_end(now: datetime, bucket_s: int = BUCKET_S) -> datetime:
    """The end of the newest complete bucket: buckets align to the epoch, so every refresh inside one agrees."""
    seconds = int(now.timestamp()) // bucket_s * bucket_s
    return datetime.fromtimestamp(seconds, UTC)


def recent_files(db: Database, home: Path, deployment: str, until: datetime, buckets: int = BUCKETS,
                 bucket_s: int = BUCKET_S) -> list[Path]:  # fmt: skip
    """The deployment's log files that may hold records of the window ending at `until`."""
    from mlbox.monitor.logread import log_files

    return log_files(db, home, deployment, until - timedelta(seconds=buckets * bucket_s), until)


def traffic(files: list[Path], until: datetime, buckets: int = BUCKETS, bucket_s: int = BUCKET_S) -> Traffic:
    """Requests, errors and p99 latency (DuckDB's `quantile_cont`, as `mlbox monitor` reports it) per bucket."""
    since = until - timedelta(seconds=buckets * bucket_s)
    requests, errors = [0] * buckets, [0] * buckets
    p99: list[float | None] = [None] * buckets
    if files:
        from mlbox.features.offline import connect
        from mlbox.monitor.quality import log_scan, window_sql

        where, params = window_sql(since, until)
        con = connect(1)  # one thread: the TUI must not take the cores `mlbox serve` answers on
        try:
            found = con.execute(
                f"SELECT CAST(floor((epoch(ts) - ?) / ?) AS INTEGER) AS b, count(*), count(error), "
                f"quantile_cont(latency_ms, 0.99) FROM {log_scan(con, files)} "
                f"WHERE {where} AND NOT coalesce(shadow, false) GROUP BY b",
                [since.timestamp(), bucket_s, *params],
            ).fetchall()
        finally:
            con.close()
        for b, n, e, p in found:
            if 0 <= b < buckets:
                requests[b], errors[b], p99[b] = int(n), int(e), None if p is None else float(p)
    return Traffic(until, bucket_s, requests, errors, p99)
