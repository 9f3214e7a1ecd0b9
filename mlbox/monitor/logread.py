"""Reading a window of the prediction log in DuckDB: one model's rows as numeric arrays and level counts.

The log's files are pruned by their cataloged time range, then read with `union_by_name` so
that files written before the typed columns existed (or by a writer that had no signature)
still count: for those records the same expressions parse the JSON (`mlbox.flavors.logged`).
Each record is unnested into its rows; failed requests (`error` set) and shadow records are left
out. Numeric columns come back as float64 arrays (NaN for nulls); categorical ones as counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from mlbox import clock
from mlbox.features.offline import connect
from mlbox.features.pit import lit, q
from mlbox.flavors.logged import column_name, input_select, output_names, output_select
from mlbox.flavors.signature import Signature
from mlbox.store.sqlite import Database

Counts = dict[str | None, int]


@dataclass
class Rows:
    """One variant's rows in a window: numeric features as arrays, categorical ones as level counts, outputs alike."""

    variant: str
    model: str
    rows: int = 0
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, Counts] = field(default_factory=dict)
    outputs: dict[str, np.ndarray | Counts] = field(default_factory=dict)
    first_ts: datetime | None = None
    last_ts: datetime | None = None


def log_files(db: Database, home: Path, deployment: str, since: datetime | None, until: datetime | None) -> list[Path]:
    """The deployment's cataloged log files whose time range meets [since, until), oldest first."""
    sql = "SELECT path FROM prediction_batches WHERE deployment = ?"
    params: list[object] = [deployment]
    if since is not None:
        sql += " AND max_ts >= ?"
        params.append(clock.iso(since))
    if until is not None:
        sql += " AND min_ts < ?"
        params.append(clock.iso(until))
    return [home / r["path"] for r in db.query(sql + " ORDER BY id", tuple(params))]


def read_rows(
    files: list[Path], signature: Signature, *, model: str, variant: str, since: datetime | None, until: datetime | None,
    last_rows: int | None = None, threads: int | None = None,
) -> Rows:  # fmt: skip
    """The rows `model` answered as `variant` in the window, from `files`."""
    out = Rows(variant=variant, model=model)
    if not files:
        return out
    con = connect(threads)
    try:
        source = f"read_parquet([{', '.join(lit(str(f)) for f in files)}], union_by_name = true)"
        present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        where = ["model = $model", "variant = $variant", "NOT shadow", "error IS NULL"]
        params: dict[str, object] = {"model": model, "variant": variant}
        if since is not None:
            where.append("ts >= $since")
            params["since"] = since
        if until is not None:
            where.append("ts < $until")
            params["until"] = until
        con.execute(f"CREATE TEMP TABLE w AS {_rows_sql(signature, source, present, ' AND '.join(where), last_rows)}", params)
        count, first, last = con.execute("SELECT count(*), min(__ts), max(__ts) FROM w").fetchone() or (0, None, None)
        out.rows, out.first_ts, out.last_ts = int(count), first, last
        for col in signature.columns:
            if col.kind == "numeric":
                out.numeric[col.name] = _numbers(con, column_name(col))
            else:
                out.categorical[col.name] = _counts(con, column_name(col))
        names = output_names(signature)
        arrays = {name: _numbers(con, "y." + name) for name in names}
        out.outputs.update(arrays)
        if signature.task == "classification" and names:
            out.outputs["class"] = _argmax_counts(arrays, [str(c) for c in signature.classes][: len(names)])
    finally:
        con.close()
    return out


def _rows_sql(signature: Signature, source: str, present: set[str], where: str, last_rows: int | None) -> str:
    """One row per logged request row: typed columns where the file has them, else the same values from JSON."""
    parse_in, inputs = input_select(signature, "inputs")
    parse_out, outputs = output_select(signature, "outputs")
    typed_in = [column_name(c) for c in signature.columns]
    typed_out = ["y." + n for n in output_names(signature)]
    # a record written with typed columns has all of them: the first says whether to parse its JSON
    need_in = f"{q(typed_in[0])} IS NULL" if typed_in and typed_in[0] in present else "true"
    need_out = f"{q(typed_out[0])} IS NULL" if typed_out and typed_out[0] in present else "true"
    parts = []
    for name, expr in zip([*typed_in, *typed_out], [*inputs, *outputs], strict=True):
        fallback = expr.rsplit(" AS ", 1)[0]
        value = f"coalesce({q(name)}, {fallback})" if name in present else fallback
        parts.append(f"unnest({value}) AS {q(name)}")
    inner = (
        f"SELECT *, CASE WHEN {need_in} THEN {parse_in} END AS __j, CASE WHEN {need_out} THEN {parse_out} END AS __o "
        f"FROM {source} WHERE {where}"
    )
    sql = f"SELECT ts AS __ts, {', '.join(parts)} FROM ({inner})"
    if last_rows is not None:
        sql += f" ORDER BY __ts DESC LIMIT {int(last_rows)}"
    return sql


def _numbers(con: object, name: str) -> np.ndarray:
    rows = con.execute(f"SELECT coalesce({q(name)}, 'NaN'::DOUBLE) FROM w").fetchnumpy()  # type: ignore[attr-defined]
    return np.asarray(next(iter(rows.values())), dtype=np.float64)


def _counts(con: object, name: str) -> Counts:
    rows = con.execute(f"SELECT {q(name)}, count(*) FROM w GROUP BY 1").fetchall()  # type: ignore[attr-defined]
    return {level: int(n) for level, n in rows}


def _argmax_counts(arrays: dict[str, np.ndarray], classes: list[str]) -> Counts:
    """The predicted classes' counts from the probability columns (binary: p of the positive class vs 0.5)."""
    if not classes:
        return {}
    probs = np.column_stack([arrays["p_" + c] for c in classes])
    valid = ~np.isnan(probs).any(axis=1)
    if len(classes) == 1:
        return {}
    picked = np.argmax(probs[valid], axis=1)
    counts = np.bincount(picked, minlength=len(classes))
    out: Counts = {classes[i]: int(n) for i, n in enumerate(counts) if n}
    if (~valid).any():
        out[None] = int((~valid).sum())
    return out
