"""Per-batch column statistics: counts, nulls, range, moments, quantiles, top values.

Stored with each batch in the catalog; they are also the reference distributions that
drift monitoring compares serving traffic against. Computed from a freshly written batch
file at little more than the cost of reading it once (measured in `mlbox bench features`):

- rows, nulls, min and max come from the Parquet writer's own statistics (`COPY ...
  RETURN_STATS`), exact and free;
- mean and standard deviation from one pass of plain sums, shifted by the column's
  midrange so the sum of squares does not cancel; a column whose sums are not finite
  (it holds inf or NaN) gets an exact second pass that leaves non-finite values out;
- quantiles exactly for batches up to `EXACT_QUANTILE_ROWS`, else estimated from the
  leading rows of up to `SAMPLE_GROUPS` evenly spaced row groups (`approx_quantile`'s
  t-digest over every row cost more than writing the batch);
- distinct counts (HyperLogLog) and top values for string and boolean fields.
"""

from __future__ import annotations

import itertools
import math
import uuid
from typing import Any

import duckdb

from mlbox.features.definitions import FeatureView
from mlbox.features.pit import lit
from mlbox.features.pit import q as _q
from mlbox.store import crypt

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
NUMERIC = ("int64", "int32", "float64", "float32")
CATEGORICAL = ("string", "bool")
TOP_K = 10
EXACT_QUANTILE_ROWS = 262_144
SAMPLE_GROUPS = 4
SAMPLE_ROWS = 8_192  # per sampled row group


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _bound(written: dict[str, str], which: str) -> float | None:
    """A written min or max. Arrow's writer (an encrypted box) stores a zero bound as -0.0 or +0.0 by the Parquet
    rule, whatever the data held; DuckDB's own statistics (which state exactness) report the value itself."""
    value = _number(written.get(which))
    return 0.0 if value == 0 and f"{which}_is_exact" not in written else value


def _sample_starts(group_rows: list[int]) -> list[int]:
    """First row numbers of up to `SAMPLE_GROUPS` evenly spaced row groups (of sizes `group_rows`)."""
    starts, at = [], 0
    for rows in group_rows:
        starts.append(at)
        at += int(rows)
    k = min(SAMPLE_GROUPS, len(starts))
    return sorted({starts[round(i * (len(starts) - 1) / max(k - 1, 1))] for i in range(k)})


def _sample_relation(con: duckdb.DuckDBPyConnection, path: str) -> str:
    """Leading rows of evenly spaced row groups: the reader prunes every other row group.

    DuckDB cannot open an encrypted file (no `parquet_metadata`, no `file_row_number`): there the
    same rows are read through its decrypting footer, row group by row group, and registered as Arrow.
    """
    if crypt.is_encrypted(path):
        return _encrypted_sample(con, path)
    groups = con.execute(
        f"SELECT DISTINCT row_group_id, row_group_num_rows FROM parquet_metadata({lit(path)}) ORDER BY 1"
    ).fetchall()
    parts = [
        f"SELECT * FROM read_parquet({lit(path)}, file_row_number = true) "
        f"WHERE file_row_number BETWEEN {a} AND {a + SAMPLE_ROWS - 1}"
        for a in _sample_starts([int(rows) for _, rows in groups])
    ]
    return f"({' UNION ALL '.join(parts)})"


def _encrypted_sample(con: duckdb.DuckDBPyConnection, path: str) -> str:
    """`_sample_relation` of an encrypted file: rows [start, start + SAMPLE_ROWS) read from the row groups they span."""
    import pyarrow as pa

    pf = crypt.parquet_file(path)
    meta = pf.metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    bounds = [0, *itertools.accumulate(sizes)]  # bounds[i]: the first row number of row group i
    pieces = []
    for start in _sample_starts(sizes):
        end = start + SAMPLE_ROWS
        groups = [i for i in range(len(sizes)) if bounds[i] < end and bounds[i + 1] > start]
        table = pf.read_row_groups(groups)
        pieces.append(table.slice(start - bounds[groups[0]], SAMPLE_ROWS))
    name = f"__sample_{uuid.uuid4().hex}"
    con.register(name, pa.concat_tables(pieces))
    return name


def batch_stats(
    con: duckdb.DuckDBPyConnection, path: str, view: FeatureView, rows: int, written: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """Statistics of a batch file just written by `crypt.copy` (`written`: its column statistics, as
    `COPY ... RETURN_STATS` gives them)."""
    col = {name.strip('"'): s for name, s in written.items()}
    data = crypt.source(con, [path])  # one relation for every pass below
    ts = _q(view.timestamp)
    exprs = [f"min({ts}) AS ts_min", f"max({ts}) AS ts_max"]
    shift: dict[str, float] = {}
    for i, f in enumerate(view.fields):
        c = _q(f.name)
        exprs.append(f"count({c}) AS c{i}")
        if f.dtype in NUMERIC:
            lo, hi = _number(col.get(f.name, {}).get("min")), _number(col.get(f.name, {}).get("max"))
            shift[f.name] = (lo + hi) / 2 if lo is not None and hi is not None else 0.0
            x = f"(CAST({c} AS DOUBLE) - ({shift[f.name]!r}))"
            exprs += [f"sum({x}) AS s{i}", f"sum({x} * {x}) AS ss{i}"]
            if rows <= EXACT_QUANTILE_ROWS:
                exprs.append(f"{_quantile(f.name)} AS q{i}")
        elif f.dtype in ("timestamp", "date"):
            exprs += [f"min({c}) AS mn{i}", f"max({c}) AS mx{i}"]
        if f.dtype in CATEGORICAL:
            exprs.append(f"approx_count_distinct({c}) AS d{i}")
    row = _one(con, f"SELECT {', '.join(exprs)} FROM {data}")
    numeric = [(i, f) for i, f in enumerate(view.fields) if f.dtype in NUMERIC]
    if numeric and rows > EXACT_QUANTILE_ROWS:
        quantiles = ", ".join(f"{_quantile(f.name)} AS q{i}" for i, f in numeric)
        row.update(_one(con, f"SELECT {quantiles} FROM {_sample_relation(con, path)}"))
    fields: dict[str, Any] = {}
    for i, f in enumerate(view.fields):
        n = int(row[f"c{i}"])
        s: dict[str, Any] = {"dtype": f.dtype, "count": n, "nulls": rows - n}
        if f.dtype in NUMERIC:
            s.update(_moments(con, data, f.name, n, shift[f.name], row[f"s{i}"], row[f"ss{i}"], col.get(f.name, {})))
            q = row[f"q{i}"] or [None] * len(QUANTILES)
            s["quantiles"] = {str(p): _clean(v) for p, v in zip(QUANTILES, q, strict=True)}
        elif f.dtype in ("timestamp", "date"):
            s.update(min=_clean(row[f"mn{i}"]), max=_clean(row[f"mx{i}"]))
        if f.dtype in CATEGORICAL:
            top = con.execute(
                f"SELECT CAST({_q(f.name)} AS VARCHAR) AS v, count(*) AS k FROM {data} "
                f"WHERE {_q(f.name)} IS NOT NULL GROUP BY 1 ORDER BY k DESC, v LIMIT {TOP_K}"
            ).fetchall()
            s.update(distinct=int(row[f"d{i}"]), top=[[v, int(k)] for v, k in top])
        fields[f.name] = s
    return {"rows": rows, "ts_min": _clean(row["ts_min"]), "ts_max": _clean(row["ts_max"]), "fields": fields}


def _quantile(name: str) -> str:
    x = f"CAST({_q(name)} AS DOUBLE)"
    return f"quantile_cont(CASE WHEN isfinite({x}) THEN {x} END, {list(QUANTILES)})"


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return dict(zip(names, (cur.fetchall() or [()])[0], strict=True))


def _moments(
    con: duckdb.DuckDBPyConnection,
    data: str,
    name: str,
    n: int,
    shift: float,
    s1: float | None,
    s2: float | None,
    written: dict[str, str],
) -> dict[str, Any]:
    """min, max, mean, std and the non-finite count of one numeric column of the relation `data`."""
    finite = s1 is not None and s2 is not None and math.isfinite(s1) and math.isfinite(s2)
    # DuckDB states exactness; Arrow's writer (an encrypted box) does not, and its numeric min/max are always exact
    exact = written.get("min_is_exact", "true") == "true" and written.get("max_is_exact", "true") == "true"
    if n == 0:
        return {"min": None, "max": None, "mean": None, "std": None, "non_finite": 0}
    if finite and exact:
        mean = shift + s1 / n  # type: ignore[operator]
        var = (s2 - s1 * s1 / n) / (n - 1) if n > 1 else None  # type: ignore[operator]
        return {
            "min": _bound(written, "min"),
            "max": _bound(written, "max"),
            "mean": mean,
            "std": math.sqrt(max(var, 0.0)) if var is not None else None,
            "non_finite": 0,
        }
    # the column holds inf or NaN (or huge values whose squares overflow): leave them out, exactly
    c = _q(name)
    x = f"CAST({c} AS DOUBLE)"
    kept = f"CASE WHEN isfinite({x}) THEN {x} END"
    row = _one(
        con,
        f"SELECT min({kept}) AS mn, max({kept}) AS mx, avg({kept}) AS av, stddev_samp({kept}) AS sd, "
        f"count(*) FILTER (WHERE {c} IS NOT NULL AND NOT isfinite({x})) AS nf FROM {data}",
    )
    return {
        "min": _clean(row["mn"]),
        "max": _clean(row["mx"]),
        "mean": _clean(row["av"]),
        "std": _clean(row["sd"]),
        "non_finite": int(row["nf"]),
    }
