"""Serving statistics per variant from the prediction log: requests, rows, errors and latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mlbox import clock
from mlbox.features.offline import connect
from mlbox.monitor.quality import log_scan, window_sql


@dataclass(frozen=True, kw_only=True)
class ServingStats:
    """One variant's traffic in a window: what a canary SLO rule (error rate, p99 latency) reads."""

    variant: str
    model: str | None  # the model of its newest record
    requests: int
    rows: int  # request rows: outputs' length, or the inputs' for a failed request
    errors: int  # records whose `error` is set
    p50_ms: float | None  # of latency_ms over every record, failed ones included (their latency is real)
    p99_ms: float | None
    first_ts: datetime | None
    last_ts: datetime | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant, "model": self.model, "requests": self.requests, "rows": self.rows,
            "errors": self.errors, "error_rate": self.error_rate, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "first_ts": clock.iso(self.first_ts) if self.first_ts else None,
            "last_ts": clock.iso(self.last_ts) if self.last_ts else None,
        }  # fmt: skip


def serving_stats(
    log_files: list[Path], since: datetime | None, until: datetime | None, *, variants: Sequence[str] = ()
) -> dict[str, ServingStats]:
    """Per variant (sorted) over [since, until); `variants` are reported with zero requests when absent.

    Percentiles are DuckDB's `quantile_cont`: linear interpolation, as numpy.percentile's default.
    """
    where, params = window_sql(since, until)
    found: dict[str, ServingStats] = {}
    if log_files:
        con = connect()
        try:
            rows = con.execute(
                "SELECT variant, arg_max(model, ts), count(*), "
                "sum(coalesce(json_array_length(outputs), json_array_length(inputs), 1)), count(error), "
                "quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.99), min(ts), max(ts) "
                f"FROM {log_scan(con, log_files)} WHERE {where} GROUP BY variant",
                params,
            ).fetchall()
        finally:
            con.close()
        for variant, model, requests, n_rows, errors, p50, p99, first, last in rows:
            found[str(variant)] = ServingStats(
                variant=str(variant), model=model, requests=int(requests), rows=int(n_rows), errors=int(errors),
                p50_ms=p50, p99_ms=p99, first_ts=first, last_ts=last,
            )  # fmt: skip
    for variant in variants:
        found.setdefault(variant, ServingStats(variant=variant, model=None, requests=0, rows=0, errors=0, p50_ms=None,
                                               p99_ms=None, first_ts=None, last_ts=None))  # fmt: skip
    return dict(sorted(found.items()))
