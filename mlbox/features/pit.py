"""The point-in-time join, as a pure SQL builder over frozen dataclasses.

For every label row and every requested view, take the view's row for the same entity
with the latest event timestamp <= the label's timestamp (DuckDB `ASOF LEFT JOIN`); values
older than the view's TTL become null; unmatched rows keep nulls. When two committed
batches can hold the same (entity, timestamp), the later-committed batch wins: the join
then orders on (timestamp, batch rank) packed into one HUGEINT, so ties resolve without
a window sort.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def q(name: str) -> str:
    """A SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def lit(text: str | os.PathLike[str]) -> str:
    """A SQL string literal (DuckDB cannot bind parameters in COPY or view definitions)."""
    return "'" + str(text).replace("'", "''") + "'"


RANK_BITS = 20  # up to ~1M batches per view
# The FROM-clause relation over some batch files: `read_parquet` here; `crypt.source` bound to a
# connection where batches may be encrypted (the builder stays pure SQL text either way).
Source = Callable[[Sequence[str]], str]


def parquet_source(files: Sequence[str]) -> str:
    """`read_parquet` over plain Parquet files."""
    return f"read_parquet([{', '.join(lit(f) for f in files)}])"


@dataclass(frozen=True)
class ViewJoin:
    """One view's side of the join."""

    alias: str
    keys: tuple[tuple[str, str], ...]  # (column, DuckDB type)
    timestamp: str
    files: tuple[str, ...]  # committed batch files, oldest commit first
    columns: tuple[tuple[str, str, str], ...]  # (field, output column name, DuckDB type)
    ttl_seconds: int | None
    tie_break: bool
    since: str | None = None  # rows older than this (first label - TTL) can only give expired values
    until: str | None = None  # rows newer than this (last label) can match no label


@dataclass(frozen=True)
class JoinSpec:
    labels: str  # relation holding the label rows and their row number `__row`
    label_timestamp: str
    label_columns: tuple[str, ...]
    views: tuple[ViewJoin, ...]


def _window(v: ViewJoin) -> str:
    """The row filter that the time bounds allow (pushed into the Parquet scan, pruning row groups)."""
    ts = q(v.timestamp)
    parts = [f"{ts} >= TIMESTAMPTZ {lit(v.since)}"] if v.since else []
    parts += [f"{ts} <= TIMESTAMPTZ {lit(v.until)}"] if v.until else []
    return f" WHERE {' AND '.join(parts)}" if parts else ""


def _view_cte(v: ViewJoin, source: Source) -> str:
    cols = [q(k) for k, _ in v.keys] + [f"{q(v.timestamp)} AS {q('__ts_' + v.alias)}"] + [q(f) for f, _, _ in v.columns]
    if not v.files:
        typed = [f"NULL::{t} AS {q(k)}" for k, t in v.keys]
        typed += [f"NULL::TIMESTAMPTZ AS {q('__ts_' + v.alias)}"] + [f"NULL::{t} AS {q(f)}" for f, _, t in v.columns]
        if v.tie_break:
            typed.append(f"NULL::HUGEINT AS {q('__o_' + v.alias)}")
        return f"{q(v.alias)} AS (SELECT {', '.join(typed)} WHERE false)"
    if not v.tie_break:
        return f"{q(v.alias)} AS (SELECT {', '.join(cols)} FROM {source(v.files)}{_window(v)})"
    order = f"epoch_us({q(v.timestamp)})::HUGEINT * {1 << RANK_BITS} + {{rank}} AS {q('__o_' + v.alias)}"
    parts = [
        f"SELECT {', '.join(cols)}, {order.format(rank=rank)} FROM {source([f])}{_window(v)}"
        for rank, f in enumerate(v.files)
    ]
    return f"{q(v.alias)} AS ({' UNION ALL '.join(parts)})"


def build_query(spec: JoinSpec, ordered: bool = True, source: Source = parquet_source) -> str:
    """SQL returning the label columns then every requested feature, in label row order.

    With `ordered=False` the rows come in the join's order, led by the label row number
    `__row`, for a caller that restores the order itself (cheaper than a SQL sort).
    `source` gives the relation over a view's batch files (default: `read_parquet`).
    """
    lts = q(spec.label_timestamp)
    ctes = [f"__l AS (SELECT * FROM {spec.labels})"]
    ctes += [_view_cte(v, source) for v in spec.views]
    select = ([] if ordered else ["__l.__row"]) + [f"__l.{q(c)}" for c in spec.label_columns]
    joins = []
    for v in spec.views:
        a = q(v.alias)
        on = [f"CAST(__l.{q(k)} AS {t}) = {a}.{q(k)}" for k, t in v.keys]
        if v.tie_break:
            top = (1 << RANK_BITS) - 1
            on.append(f"epoch_us(__l.{lts})::HUGEINT * {1 << RANK_BITS} + {top} >= {a}.{q('__o_' + v.alias)}")
        else:
            on.append(f"__l.{lts} >= {a}.{q('__ts_' + v.alias)}")
        joins.append(f"ASOF LEFT JOIN {a} ON {' AND '.join(on)}")
        fresh = (
            f"{a}.{q('__ts_' + v.alias)} >= __l.{lts} - to_seconds({int(v.ttl_seconds)})"
            if v.ttl_seconds is not None
            else None
        )
        for field, out, _ in v.columns:
            value = f"{a}.{q(field)}"
            select.append(f"CASE WHEN {fresh} THEN {value} END AS {q(out)}" if fresh else f"{value} AS {q(out)}")
    order = " ORDER BY __l.__row" if ordered else ""
    return f"WITH {', '.join(ctes)} SELECT {', '.join(select)} FROM __l {' '.join(joins)}{order}"


def output_names(label_columns: list[str], requested: list[tuple[str, str]]) -> list[str]:
    """Output column per (view, field): the field's name, or `view__field` where that would collide."""
    counts: dict[str, int] = {}
    for _, f in requested:
        counts[f] = counts.get(f, 0) + 1
    taken = set(label_columns)
    return [f if counts[f] == 1 and f not in taken else f"{v}__{f}" for v, f in requested]
