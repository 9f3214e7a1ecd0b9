"""Per-batch column statistics computed by DuckDB: counts, nulls, range, moments, quantiles, top values.

Stored with each batch in the catalog; they are also the reference distributions that
drift monitoring compares serving traffic against.
"""

from __future__ import annotations

import math
from typing import Any

import duckdb

from mlbox.features.definitions import FeatureView
from mlbox.features.pit import q as _q

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
NUMERIC = ("int64", "int32", "float64", "float32")
CATEGORICAL = ("string", "bool")
TOP_K = 10


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def column_stats(con: duckdb.DuckDBPyConnection, relation: str, view: FeatureView) -> dict[str, Any]:
    """Statistics of every field (and the timestamp) of `relation`, in two passes at most."""
    exprs = ["count(*) AS n", f"min({_q(view.timestamp)}) AS ts_min", f"max({_q(view.timestamp)}) AS ts_max"]
    for i, f in enumerate(view.fields):
        c = _q(f.name)
        exprs.append(f"count({c}) AS c{i}")
        if f.dtype in NUMERIC:
            x = f"CAST({c} AS DOUBLE)"
            finite = f"CASE WHEN isfinite({x}) THEN {x} END"
            exprs += [
                f"min({finite}) AS mn{i}",
                f"max({finite}) AS mx{i}",
                f"avg({finite}) AS av{i}",
                f"stddev_samp({finite}) AS sd{i}",
                f"approx_quantile({finite}, [{', '.join(map(str, QUANTILES))}]) AS q{i}",
                f"count(*) FILTER (WHERE {c} IS NOT NULL AND NOT isfinite({x})) AS nf{i}",
            ]
        elif f.dtype in ("timestamp", "date"):
            exprs += [f"min({c}) AS mn{i}", f"max({c}) AS mx{i}"]
        if f.dtype in CATEGORICAL:
            exprs.append(f"approx_count_distinct({c}) AS d{i}")
    cur = con.execute(f"SELECT {', '.join(exprs)} FROM {relation}")
    names = [d[0] for d in cur.description]
    row = dict(zip(names, (cur.fetchall() or [()])[0], strict=True))
    n = int(row["n"])
    fields: dict[str, Any] = {}
    for i, f in enumerate(view.fields):
        s: dict[str, Any] = {"dtype": f.dtype, "count": int(row[f"c{i}"]), "nulls": n - int(row[f"c{i}"])}
        if f.dtype in NUMERIC:
            q = row[f"q{i}"] or [None] * len(QUANTILES)
            s.update(
                min=_clean(row[f"mn{i}"]),
                max=_clean(row[f"mx{i}"]),
                mean=_clean(row[f"av{i}"]),
                std=_clean(row[f"sd{i}"]),
                quantiles={str(p): _clean(v) for p, v in zip(QUANTILES, q, strict=True)},
                non_finite=int(row[f"nf{i}"]),
            )
        elif f.dtype in ("timestamp", "date"):
            s.update(min=_clean(row[f"mn{i}"]), max=_clean(row[f"mx{i}"]))
        if f.dtype in CATEGORICAL:
            top = con.execute(
                f"SELECT CAST({_q(f.name)} AS VARCHAR) AS v, count(*) AS k FROM {relation} "
                f"WHERE {_q(f.name)} IS NOT NULL GROUP BY 1 ORDER BY k DESC, v LIMIT {TOP_K}"
            ).fetchall()
            s.update(distinct=int(row[f"d{i}"]), top=[[v, int(k)] for v, k in top])
        fields[f.name] = s
    return {"rows": n, "ts_min": _clean(row["ts_min"]), "ts_max": _clean(row["ts_max"]), "fields": fields}
