"""Real-time push: rows for a view, validated as ingest validates them, online at once and offline at the next flush.

A push validates the rows (columns, types, keys, timestamps, duplicates: the checks of
ingest), then commits them to `feature_push_rows` in meta.db together with the audit
record, and only then upserts them into the online store (newer event time wins, a tie
goes to the later push). Nothing served is missing from the staging table; a push killed
between the two commits is staged but not online yet, and reaches the online store at
the next materialize. A *flush* turns every staged row of a view version into one
immutable offline batch (duplicate (entity, timestamp) pairs keep the later push, as the
online store did) and deletes them, in one meta.db transaction, so a crash leaves the
rows either staged or in a committed batch, never both and never neither.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mlbox import clock
from mlbox.errors import UsageError, ValidationError
from mlbox.features.catalog import Catalog, ViewVersion
from mlbox.features.limits import IngestLimits
from mlbox.features.offline import OfflineStore, check_source, connect, register_source
from mlbox.features.online import OnlineStore
from mlbox.features.pit import q
from mlbox.store.audit import AuditLog

ARROW = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


def _schema(version: ViewVersion) -> pa.Schema:
    cols = [*version.entity.join_keys.items(), (version.view.timestamp, "timestamp")]
    cols += [(f.name, f.dtype) for f in version.view.fields]
    return pa.schema([(name, ARROW[dtype]) for name, dtype in cols])


def as_source(rows: Any) -> Any:
    """A list of row dicts as an Arrow table; DataFrames, Arrow tables and file paths pass through.

    Every row must carry the same columns. A column whose values Arrow cannot type as one
    (a number next to a string) is passed as text, so the view's type check names the
    column and the first bad value, as ingest does.
    """
    if not isinstance(rows, list):
        return rows
    if not rows:
        raise ValidationError("no rows to push")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValidationError(f"rows[{bad}] must be an object of column: value")
    names = list(rows[0])
    for i, row in enumerate(rows):
        if row.keys() != rows[0].keys():
            missing, extra = sorted(set(names) - set(row)), sorted(set(row) - set(names))
            detail = "; ".join([*([f"lacks {', '.join(missing)}"] if missing else []), *([f"adds {', '.join(extra)}"] if extra else [])])
            raise ValidationError(f"rows[{i}] has other columns than rows[0]: {detail}", hint="send every column in every row (null for missing)")
    columns = {}
    for name in names:
        values = [row[name] for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values])
    return pa.table(columns)


def validate(version: ViewVersion, source: Any, *, duplicate_policy: str, naive_timestamps: str, base_dir: Path,
             limits: IngestLimits | None = None) -> tuple[pa.Table, list[str]]:  # fmt: skip
    """The rows typed as the view stores them (keys, timestamp, fields), or a ValidationError naming the problem.

    A pushed file is held to the ingest limits (`limits`, default: the settings' defaults) before it is read.
    """
    view = version.view
    if view.transformation:
        raise UsageError(
            f"view {version.name!r} derives its fields with a transformation, so rows cannot be pushed to it",
            hint="ingest its source instead",
        )
    con = connect(threads=1)
    try:
        if isinstance(source, (str, Path)) or type(source).__module__.startswith("pandas"):
            label = register_source(con, source, base_dir, sub_micros="ceil", limits=limits)  # rounds as ingest does
        else:
            con.register("source", source)
            label = f"rows pushed to {version.ref}"
        checked = check_source(con, "source", version, label, naive_timestamps=naive_timestamps,
                               duplicate_policy=duplicate_policy, limits=limits)  # fmt: skip
        notes = checked.notes
        typed = f"SELECT {checked.select}, row_number() OVER () AS __ord FROM source"
        key_cols = checked.key_cols
        order = ", ".join(q(c) for c in _schema(version).names)
        table = con.sql(
            f"SELECT {order} FROM ({typed}) QUALIFY row_number() OVER (PARTITION BY {key_cols} ORDER BY __ord DESC) = 1 "
            "ORDER BY __ord"
        ).to_arrow_table()
    except duckdb.Error as exc:
        raise ValidationError(f"rows pushed to {version.ref}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        con.close()
    return table.cast(_schema(version)), notes


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value


def stage(catalog: Catalog, audit: AuditLog, version: ViewVersion, table: pa.Table, actor: str) -> None:
    """Commit the typed rows to the staging table, with the audit record, in one transaction."""
    now = clock.iso()
    payload = [(version.name, version.version, json.dumps({k: _json_value(v) for k, v in r.items()}), now, actor) for r in table.to_pylist()]
    with catalog.db.atomic():
        catalog.db.executemany(
            "INSERT INTO feature_push_rows (view, version, row, pushed_at, pushed_by) VALUES (?, ?, ?, ?, ?)", payload
        )
        audit.record(actor, "features.push", version.ref, {"rows": table.num_rows})


def to_online(online: OnlineStore, version: ViewVersion, table: pa.Table) -> int:
    """Upsert the typed rows into the view version's online table (created if it does not exist yet)."""
    ts = version.view.timestamp
    micros = pc.cast(table.column(ts).cast(pa.timestamp("us", tz="UTC")), pa.int64())
    batch = table.drop_columns([ts]).append_column("__ts", micros)
    return online.write(version, batch.to_batches(), full=False)


def pending(catalog: Catalog, version: ViewVersion | None = None) -> list[dict[str, Any]]:
    """Staged rows per view version: [{view, version, rows, oldest}]."""
    sql = "SELECT view, version, count(*) AS rows, min(pushed_at) AS oldest FROM feature_push_rows"
    params: tuple[Any, ...] = ()
    if version is not None:
        sql += " WHERE view = ? AND version = ?"
        params = (version.name, version.version)
    return catalog.db.query(sql + " GROUP BY view, version ORDER BY view, version", params)


def flush(catalog: Catalog, offline: OfflineStore, version: ViewVersion, actor: str) -> int | None:
    """Commit every staged row of `version` as one offline batch and unstage them atomically; the batch id, or None."""
    where = (version.name, version.version)
    if not catalog.db.scalar("SELECT 1 FROM feature_push_rows WHERE view = ? AND version = ? LIMIT 1", where):
        return None  # the common case, without taking the write lock
    with catalog.db.atomic():  # meta.db's write lock for the whole flush: the ingest's commit nests as a savepoint
        rows = catalog.db.query(
            "SELECT id, row FROM feature_push_rows WHERE view = ? AND version = ? ORDER BY id", (version.name, version.version)
        )
        if not rows:
            return None
        schema = _schema(version)
        temporal = {f.name: f.type for f in schema if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)}
        records = []
        for r in rows:
            record = json.loads(r["row"])
            for name, kind in temporal.items():
                if record.get(name) is not None:
                    record[name] = (dt.datetime if pa.types.is_timestamp(kind) else dt.date).fromisoformat(record[name])
            records.append(record)
        table = pa.Table.from_pylist(records, schema=schema)
        result = offline.ingest(version, table, actor, duplicate_policy="keep-last", naive_timestamps="utc")
        catalog.db.execute(
            "DELETE FROM feature_push_rows WHERE view = ? AND version = ? AND id <= ?",
            (version.name, version.version, rows[-1]["id"]),
        )
    return result.batch.id
