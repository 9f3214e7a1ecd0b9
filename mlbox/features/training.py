"""Point-in-time training sets: resolve feature references at a snapshot, run the join, fingerprint it.

The fingerprint hashes the inputs that determine the frame: the label rows (content and
order), the resolved view versions, fields and TTLs, and the exact committed batches (ids
and sha256). The same labels at the same snapshot give the same frame and fingerprint,
whatever was ingested later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mlbox.errors import UsageError, ValidationError
from mlbox.features.catalog import Catalog, ViewVersion
from mlbox.features.definitions import DTYPES, FeatureRef
from mlbox.features.offline import OfflineStore, first, register_source
from mlbox.features.pit import JoinSpec, ViewJoin, build_query, lit, output_names, q

TIMESTAMP_TYPES = ("TIMESTAMP WITH TIME ZONE", "TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATE")


@dataclass
class TrainingSet:
    """A point-in-time correct frame plus everything needed to reproduce and trace it."""

    fingerprint: str
    snapshot: int
    features: list[str]  # resolved, "view@version:field"
    columns: dict[str, str]  # output column -> "view@version:field"
    batches: list[int]
    label_rows: int
    frame: Any = None  # pandas DataFrame (or pyarrow Table), unless written to a file
    path: Path | None = None
    views: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    spec: JoinSpec
    versions: list[ViewVersion]
    requested: list[tuple[ViewVersion, str, str]]  # (version, field, output name)
    batches: dict[str, list[tuple[int, str]]]  # view ref -> [(batch id, sha256)]


def resolve(catalog: Catalog, offline: OfflineStore, refs: list[str], snapshot: int, label_columns: list[str], label_ts: str) -> Plan:
    """Turn feature references into a join plan over the batches committed at `snapshot`."""
    if not refs:
        raise UsageError("no features requested", hint="pass features like customer_profile:age or usage:*")
    parsed = [FeatureRef.parse(r) for r in refs]
    versions: dict[tuple[str, int | None], ViewVersion] = {}
    wanted: list[tuple[ViewVersion, str]] = []
    for ref in parsed:
        v = versions.setdefault((ref.view, ref.version), catalog.view(ref.view, ref.version, snapshot))
        names = [f.name for f in v.view.fields] if ref.field == "*" else [v.view.get_field(ref.field).name]
        wanted += [(v, n) for n in names if (v, n) not in wanted]
    versions_of: dict[str, set[int]] = {}
    for v, _ in wanted:
        versions_of.setdefault(v.name, set()).add(v.version)
    qualifier = {v.ref: v.name if len(versions_of[v.name]) == 1 else f"{v.name}_v{v.version}" for v, _ in wanted}
    outs = output_names(label_columns, [(qualifier[v.ref], f) for v, f in wanted])
    joins, batches = [], {}
    used = list({v.ref: v for v, _ in wanted}.values())
    for i, v in enumerate(used):
        missing = [k for k in v.keys if k not in label_columns]
        if missing:
            raise ValidationError(
                f"labels lack the join key(s) {', '.join(missing)} of entity {v.entity.name!r} (view {v.name})"
            )
        files = offline.files(v, snapshot)
        batches[v.ref] = [(b.id, b.sha256) for b, _ in files]
        ranges = sorted((b.min_ts or "", b.max_ts or "") for b, _ in files)
        overlap = any(ranges[j + 1][0] <= ranges[j][1] for j in range(len(ranges) - 1))
        cols = tuple(
            (f, out, DTYPES[v.view.get_field(f).dtype]) for (vv, f), out in zip(wanted, outs, strict=True) if vv is v
        )
        joins.append(
            ViewJoin(
                alias=f"v{i}",
                keys=tuple((k, DTYPES[t]) for k, t in v.entity.join_keys.items()),
                timestamp=v.view.timestamp,
                files=tuple(str(p) for _, p in files),
                columns=cols,
                ttl_seconds=v.view.ttl_seconds,
                tie_break=overlap,
            )
        )
    spec = JoinSpec("__labels", label_ts, tuple(label_columns), tuple(joins))
    requested = [(v, f, out) for (v, f), out in zip(wanted, outs, strict=True)]
    return Plan(spec, used, requested, batches)


def register_labels(con: duckdb.DuckDBPyConnection, labels: Any, timestamp: str | None, base_dir: Path) -> tuple[list[str], str, int]:
    """Expose labels as `__labels` with a UTC timestamp column; return (columns, timestamp column, rows)."""
    register_source(con, labels, base_dir)
    schema = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE source)").fetchall())
    if timestamp is None:
        candidates = [c for c, t in schema.items() if t in TIMESTAMP_TYPES]
        if len(candidates) != 1:
            found = f"found {', '.join(candidates)}" if candidates else "found none"
            raise UsageError(f"cannot tell which label column is the event timestamp ({found})", hint="pass --timestamp COLUMN")
        timestamp = candidates[0]
    if timestamp not in schema:
        raise ValidationError(f"labels have no column {timestamp!r}", hint=f"columns: {', '.join(schema)}")
    ts = q(timestamp)
    kind = schema[timestamp]
    conv = f"CAST({ts} AS TIMESTAMPTZ)" if kind != "VARCHAR" else f"TRY_CAST({ts} AS TIMESTAMPTZ)"
    if kind not in TIMESTAMP_TYPES and kind != "VARCHAR":
        raise ValidationError(f"label column {timestamp!r} is {kind}, not a timestamp")
    con.execute(f"CREATE TEMP VIEW __labels AS SELECT * REPLACE ({conv} AS {ts}) FROM source")
    bad = first(con.execute(f"SELECT count(*), count(*) FILTER (WHERE {ts} IS NULL) FROM __labels")) or (0, 0)
    if bad[1]:
        raise ValidationError(f"labels: {bad[1]} row(s) have no valid timestamp in {timestamp!r}")
    return list(schema), timestamp, int(bad[0])


def fingerprint(con: duckdb.DuckDBPyConnection, plan: Plan) -> str:
    cols = ", ".join(f"__l.{q(c)}" for c in plan.spec.label_columns)
    rows, digest = first(con.execute(
        f"SELECT count(*), bit_xor(hash(__row, {cols})) FROM (SELECT *, row_number() OVER () AS __row FROM __labels) __l"
    )) or (0, 0)
    body = {
        "labels": [int(rows), str(digest), plan.spec.label_columns, plan.spec.label_timestamp],
        "features": [[v.ref, f, out, v.view.ttl_seconds, v.definition_hash] for v, f, out in plan.requested],
        "batches": plan.batches,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def build(
    catalog: Catalog,
    offline: OfflineStore,
    labels: Any,
    features: list[str],
    *,
    snapshot: int | None,
    timestamp: str | None,
    out: Path | None,
    as_arrow: bool,
    base_dir: Path,
) -> TrainingSet:
    snap = catalog.snapshot() if snapshot is None else int(snapshot)
    if snap < 0 or snap > catalog.snapshot():
        raise UsageError(f"snapshot {snapshot} does not exist yet (latest is {catalog.snapshot()})")
    con = offline.connect()
    try:
        label_columns, ts, rows = register_labels(con, labels, timestamp, base_dir)
        plan = resolve(catalog, offline, features, snap, label_columns, ts)
        sql = build_query(plan.spec)
        result = TrainingSet(
            fingerprint=fingerprint(con, plan),
            snapshot=snap,
            features=[f"{v.ref}:{f}" for v, f, _ in plan.requested],
            columns={out: f"{v.ref}:{f}" for v, f, out in plan.requested},
            batches=sorted(b for bs in plan.batches.values() for b, _ in bs),
            label_rows=rows,
            views=[v.ref for v in plan.versions],
        )
        try:
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(f".{out.name}.tmp")
                con.execute(f"COPY ({sql}) TO {lit(tmp)} (FORMAT parquet, COMPRESSION snappy)")
                tmp.replace(out)
                result.path = out
            elif as_arrow:
                result.frame = con.sql(sql).to_arrow_table()
            else:
                result.frame = con.execute(sql).df()
        except duckdb.ConversionException as exc:
            raise ValidationError(f"labels: a join key cannot be compared with the view's key type: {exc}") from None
        return result
    finally:
        con.close()
