"""Point-in-time training sets: resolve feature references at a snapshot, run the join, fingerprint it.

The fingerprint (features/fingerprint.py) hashes the inputs that determine the frame: the
label rows (content and order), the resolved view versions, fields, output names and TTLs,
and the exact committed batches (ids and sha256). The same labels at the same snapshot give
the same frame and fingerprint, whatever was ingested later.

The join runs unordered and the rows are put back in label order afterwards; the fingerprint
is taken from the frame's own label columns, so labels are read by the join and by one cheap
pass (count, timestamp check and range) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from mlbox.errors import UsageError, ValidationError
from mlbox.features import fingerprint as fp
from mlbox.features.limits import IngestLimits
from mlbox.features.catalog import Catalog, ViewVersion
from mlbox.features.definitions import DTYPES, FeatureRef
from mlbox.features.offline import OfflineStore, first, micros_sql, register_source
from mlbox.features.pit import JoinSpec, ViewJoin, build_query, lit, output_names, q
from mlbox.store import crypt, purges

TIMESTAMP_TYPES = (
    "TIMESTAMP WITH TIME ZONE", "TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMPTZ_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATE",
)  # fmt: skip
ROW = "__row"  # label row number, carried through the join to restore label order


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
    purged: list[str] = field(default_factory=list)  # retention purges of the views read: what the set cannot hold


def audit_details(result: TrainingSet) -> dict[str, Any]:
    """The audit entry of a built set (`features.training_set`): what it read and where it went, no values.

    `out` is set when the set was written to a file, which makes the entry also the record of that export.
    """
    return {
        "snapshot": result.snapshot,
        "rows": result.label_rows,
        "views": result.views,
        "features": len(result.features),
        "batches": len(result.batches),
        "out": None if result.path is None else str(result.path),
        "purged": result.purged,
    }


@dataclass(frozen=True)
class Plan:
    spec: JoinSpec
    versions: list[ViewVersion]
    requested: list[tuple[ViewVersion, str, str]]  # (version, field, output name)
    batches: dict[str, list[tuple[int, str]]]  # view ref -> [(batch id, sha256)]


def _prune(files: list[tuple[Any, Path]], ttl: int | None, span: tuple[datetime, datetime] | None) -> list[tuple[Any, Path]]:
    """Drop batches whose stored time range cannot serve any label.

    A batch starting after the last label can match nothing; one ending more than the TTL
    before the first label can only supply values the TTL nulls — without it, the join
    falls back to an even older row (also expired) or to none, so the frame is the same.
    """
    if span is None:
        return files
    first_label, last_label = span
    kept = []
    for b, path in files:
        lo = datetime.fromisoformat(b.min_ts) if b.min_ts else None
        hi = datetime.fromisoformat(b.max_ts) if b.max_ts else None
        if lo is not None and lo > last_label:
            continue
        if ttl is not None and hi is not None and hi < first_label - timedelta(seconds=ttl):
            continue
        kept.append((b, path))
    return kept


def _row_bounds(
    files: list[tuple[Any, Path]], ttl: int | None, span: tuple[datetime, datetime] | None
) -> tuple[str | None, str | None]:
    """Row filters worth adding: only where a kept batch holds rows outside what labels can use
    (a filter every row passes would cost a comparison per row for nothing)."""
    if span is None or not files:
        return None, None
    lo = min((datetime.fromisoformat(b.min_ts) for b, _ in files if b.min_ts), default=None)
    hi = max((datetime.fromisoformat(b.max_ts) for b, _ in files if b.max_ts), default=None)
    first_usable = span[0] - timedelta(seconds=ttl) if ttl is not None else None
    until = span[1].isoformat() if hi is None or hi > span[1] else None
    since = first_usable.isoformat() if first_usable is not None and (lo is None or lo < first_usable) else None
    return since, until


def _committed(catalog: Catalog, offline: OfflineStore, v: ViewVersion, snapshot: int, pinned: bool) -> list[tuple[Any, Path]]:
    """The version's batches at `snapshot`. None at a pinned snapshot is an error, never a column of
    silent nulls; an unpinned read of a view not yet ingested gives nulls (the data may be on its way)."""
    files = offline.files(v, snapshot)
    if files or not pinned:
        return files
    later = catalog.batches(v.name, v.version)
    if later:
        raise ValidationError(
            f"view {v.ref} has no data at snapshot {snapshot}: its first batch was committed at snapshot {later[0].commit_seq}",
            hint=f"pin snapshot {later[0].commit_seq} or later, or leave the snapshot out for the latest",
        )
    raise ValidationError(
        f"view {v.ref} has no data at snapshot {snapshot}: no batch is committed yet",
        hint=f"ingest data first (mlbox features ingest {v.name} SOURCE), then pin a later snapshot",
    )


def resolve(
    catalog: Catalog,
    offline: OfflineStore,
    refs: list[str],
    snapshot: int,
    label_columns: list[str],
    label_ts: str,
    label_span: tuple[datetime, datetime] | None = None,
    pinned: bool = False,
) -> Plan:
    """Turn feature references into a join plan over the batches committed at `snapshot`.

    `label_span` (first and last label timestamp) prunes batches and rows that cannot match.
    """
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
        files = _committed(catalog, offline, v, snapshot, pinned)
        batches[v.ref] = [(b.id, b.sha256) for b, _ in files]
        ttl = v.view.ttl_seconds
        files = _prune(files, ttl, label_span)
        ranges = sorted((b.min_ts or "", b.max_ts or "") for b, _ in files)
        overlap = any(ranges[j + 1][0] <= ranges[j][1] for j in range(len(ranges) - 1))
        cols = tuple(
            (f, out, DTYPES[v.view.get_field(f).dtype]) for (vv, f), out in zip(wanted, outs, strict=True) if vv is v
        )
        since, until = _row_bounds(files, ttl, label_span)
        joins.append(
            ViewJoin(
                alias=f"v{i}",
                keys=tuple((k, DTYPES[t]) for k, t in v.entity.join_keys.items()),
                timestamp=v.view.timestamp,
                files=tuple(str(p) for _, p in files),
                columns=cols,
                ttl_seconds=ttl,
                tie_break=overlap,
                since=since,
                until=until,
            )
        )
    spec = JoinSpec("__labels", label_ts, tuple(label_columns), tuple(joins))
    requested = [(v, f, out) for (v, f), out in zip(wanted, outs, strict=True)]
    return Plan(spec, used, requested, batches)


@dataclass(frozen=True)
class Labels:
    """The registered label relation `__labels` (label columns plus `__row`) and what one cheap pass found."""

    columns: list[str]
    timestamp: str
    rows: int
    span: tuple[datetime, datetime] | None  # first and last label timestamp


def register_labels(
    con: duckdb.DuckDBPyConnection, labels: Any, timestamp: str | None, base_dir: Path, limits: IngestLimits | None = None
) -> Labels:
    """Expose the labels as `__labels`: the timestamp as UTC microseconds (floored, so a label never
    moves later), plus the row number `__row` that restores label order after the join; the file is held
    to the ingest limits (`limits`, default: the settings' defaults)."""
    label = register_source(con, labels, base_dir, sub_micros="floor", limits=limits)
    schema = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE source)").fetchall())
    if timestamp is None:
        candidates = [c for c, t in schema.items() if t in TIMESTAMP_TYPES]
        if len(candidates) != 1:
            found = f"found {', '.join(candidates)}" if candidates else "found none"
            raise UsageError(f"cannot tell which label column is the event timestamp ({found})", hint="pass --timestamp COLUMN")
        timestamp = candidates[0]
    if timestamp not in schema:
        raise ValidationError(f"labels have no column {timestamp!r}", hint=f"columns: {', '.join(schema)}")
    if ROW in schema:
        raise ValidationError(f"labels have a column named {ROW!r}; names starting with __ are reserved")
    kind = schema[timestamp]
    if kind not in TIMESTAMP_TYPES and kind != "VARCHAR":
        raise ValidationError(f"label column {timestamp!r} is {kind}, not a timestamp")
    ts = q(timestamp)
    conv = f"{micros_sql(ts, kind, 'floor')} AS {ts}"
    if label.lower().endswith(".parquet") and "file_row_number" not in schema and not crypt.is_encrypted(label):
        # the reader's own row number: no window operator, the scan stays parallel
        body = f"SELECT * EXCLUDE (file_row_number) REPLACE ({conv}), file_row_number AS {ROW} "
        body += f"FROM read_parquet({lit(label)}, file_row_number = true)"
    else:
        body = f"SELECT * REPLACE ({conv}), row_number() OVER () - 1 AS {ROW} FROM source"  # a streaming window
    con.execute(f"CREATE TEMP VIEW __labels AS {body}")
    counts = first(con.execute(f"SELECT count(*), count({ts}), min({ts}), max({ts}) FROM __labels"))
    rows, valid, lo, hi = counts or (0, 0, None, None)
    if rows != valid:
        raise ValidationError(f"labels: {rows - valid} row(s) have no valid timestamp in {timestamp!r}")
    return Labels(list(schema), timestamp, int(rows), (lo, hi) if rows else None)


def _in_label_order(table: pa.Table) -> pa.Table:
    """Put the join's rows back in label order by `__row` (a permutation of 0..n-1): an O(n) scatter
    then one gather per column, in threads; measured cheaper than DuckDB's ORDER BY on wide rows."""
    row = table.column(ROW).to_numpy()
    order = np.empty(len(row), dtype=np.int64)
    order[row] = np.arange(len(row), dtype=np.int64)
    indices = pa.array(order)
    table = table.drop_columns([ROW])
    with ThreadPoolExecutor(min(4, max(1, table.num_columns))) as pool:
        columns = list(pool.map(lambda c: c.combine_chunks().take(indices), table.columns))  # 2x faster than chunked
    return pa.Table.from_arrays(columns, schema=table.schema)


def fingerprint(labels: pa.Table, plan: Plan) -> str:
    """The training set's content digest (recipe in features/fingerprint.py and docs/features.md)."""
    params = {
        "label_columns": list(plan.spec.label_columns),
        "label_timestamp": plan.spec.label_timestamp,
        "features": [
            {"view": v.ref, "field": f, "output": out, "ttl_seconds": v.view.ttl_seconds, "definition_hash": v.definition_hash}
            for v, f, out in plan.requested
        ],
        "views": [
            {
                "view": v.ref,
                "entity_keys": sorted(v.entity.join_keys.items()),
                "timestamp": v.view.timestamp,
                "ttl_seconds": v.view.ttl_seconds,
                "batches": [[b, sha] for b, sha in plan.batches[v.ref]],
            }
            for v in plan.versions
        ],
    }
    return fp.digest(labels, params)


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

    def source(files: Sequence[str]) -> str:  # batch files, decrypted through Arrow in an encrypted box
        return crypt.source(con, files)

    try:
        lab = register_labels(con, labels, timestamp, base_dir, offline.limits)
        plan = resolve(catalog, offline, features, snap, lab.columns, lab.timestamp, lab.span, snapshot is not None)
        result = TrainingSet(
            fingerprint="",
            snapshot=snap,
            features=[f"{v.ref}:{f}" for v, f, _ in plan.requested],
            columns={out: f"{v.ref}:{f}" for v, f, out in plan.requested},
            batches=sorted(b for bs in plan.batches.values() for b, _ in bs),
            label_rows=lab.rows,
            views=[v.ref for v in plan.versions],
            purged=[p.statement() for p in purges.of(catalog.db, "features", [v.ref for v in plan.versions])],
        )
        try:
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(f".{out.name}.tmp")
                crypt.copy(con, build_query(plan.spec, source=source), tmp, compression="snappy")  # encrypted in an encrypted box
                # the labels as the frame holds them (read back in file order), hashed like the in-memory paths
                cols = ", ".join(q(c) for c in lab.columns)
                result.fingerprint = fingerprint(con.sql(f"SELECT {cols} FROM {source([str(tmp)])}").to_arrow_table(), plan)
                tmp.replace(out)
                result.path = out
            else:
                table = _in_label_order(con.sql(build_query(plan.spec, ordered=False, source=source)).to_arrow_table())
                result.fingerprint = fingerprint(table.select(lab.columns), plan)
                result.frame = table if as_arrow else con.from_arrow(table).df()
        except duckdb.ConversionException as exc:
            raise ValidationError(f"labels: a join key cannot be compared with the view's key type: {exc}") from None
        return result
    finally:
        con.close()
