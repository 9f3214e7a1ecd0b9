"""Ground truth for logged predictions: `mlbox labels ingest DEPLOYMENT FILE`.

A labels file (CSV or Parquet) has a label column and either `request_id` (and optionally
`row`, the row's position in its request), or the entity key column(s) and a timestamp: each
such label attaches to the latest predicted row for that entity at or before its timestamp.
The log records the entity of every row of a request (a JSON array, one object per row), so a
label finds its row inside a multi-row request. Matched labels are stored as an immutable
Parquet batch `predictions/<deployment>/labels/<uuid>.parquet` — `request_id`, `row` (null:
the whole request), `label`, `predicted_at` — ready to be joined with the prediction log. Logs are
read and the batch written through mlbox.store.crypt (encrypted in an encrypted box).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlbox import clock
from mlbox.errors import NotFound, ValidationError
from mlbox.features.limits import IngestLimits
from mlbox.features.offline import connect, first, inside_box, register_source
from mlbox.features.pit import lit, q
from mlbox.store import crypt
from mlbox.store.audit import AuditLog
from mlbox.store.sqlite import Database


@dataclass(frozen=True)
class LabelResult:
    """What one `labels ingest` stored: rows read, rows matched to a prediction, the batch's path, the match mode."""

    deployment: str
    rows: int
    matched: int
    path: str
    mode: str


def prediction_files(db: Database, root: Path, deployment: str) -> list[Path]:
    """The deployment's cataloged prediction-log files, oldest first."""
    return [root.parent / r["path"] for r in db.query("SELECT path FROM prediction_batches WHERE deployment = ? ORDER BY id", (deployment,))]


def ingest_labels(
    db: Database, audit: AuditLog, root: Path, deployment: str, source: Path, actor: str,
    label: str = "label", timestamp: str = "ts", keys: list[str] | None = None, limits: IngestLimits | None = None,
) -> LabelResult:  # fmt: skip
    """Match a labels file to logged predictions and store the matches as one batch; the file is held to `limits`."""
    files = prediction_files(db, root, deployment)
    if not files:
        raise NotFound(f"deployment {deployment!r} has no logged predictions yet")
    con = connect()
    try:
        register_source(con, source, Path.cwd(), text_columns=(label,), limits=limits)  # a label is text as written: `yes` stays `yes`
        cols = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE source)").fetchall())
        if label not in cols:
            raise ValidationError(f"{source}: no label column {label!r}", hint="name it with --label")
        con.execute(f"CREATE TEMP VIEW p AS SELECT * FROM {crypt.source(con, files)} WHERE NOT shadow")
        if "request_id" in cols:
            mode = "request_id"
            row = 'CAST(s."row" AS INTEGER)' if "row" in cols else "CAST(NULL AS INTEGER)"
            sql = (
                f'SELECT s.request_id, {row} AS "row", s.{q(label)} AS label, p.ts AS predicted_at FROM source s '
                "LEFT JOIN (SELECT DISTINCT ON (request_id) request_id, ts FROM p) p USING (request_id)"
            )
        else:
            keys = keys or [c for c in cols if c not in (label, timestamp)]
            missing = [k for k in [*keys, timestamp] if k not in cols]
            if missing or not keys:
                raise ValidationError(
                    f"{source}: needs request_id, or entity key column(s) and {timestamp!r}",
                    hint="name them with --key and --timestamp",
                )
            mode = "entity"
            key_expr = " || '|' || ".join(f"coalesce(CAST(s.{q(k)} AS VARCHAR), '')" for k in keys)
            pkey_expr = " || '|' || ".join(f"coalesce(json_extract_string(obj, {lit('$.' + k)}), '')" for k in keys)
            # one row per logged request row; logs written before entities were per row hold one object
            rows = (
                'SELECT request_id, ts, unnest(range(len(arr))) AS "row", unnest(arr) AS obj FROM (SELECT request_id, ts, '
                "CASE WHEN json_type(entity) = 'ARRAY' THEN json_extract(entity, '$[*]') ELSE [entity::JSON] END AS arr "
                "FROM p WHERE entity IS NOT NULL)"
            )
            sql = (
                f'SELECT p.request_id, CAST(p."row" AS INTEGER) AS "row", s.{q(label)} AS label, p.ts AS predicted_at FROM '
                f"(SELECT *, {key_expr} AS __k, CAST({q(timestamp)} AS TIMESTAMPTZ) AS __t FROM source s) s "
                f'ASOF LEFT JOIN (SELECT request_id, "row", ts, {pkey_expr} AS __k, CAST(ts AS TIMESTAMPTZ) AS __t '
                f"FROM ({rows})) p ON s.__k = p.__k AND s.__t >= p.__t"
            )
        try:
            con.execute(f"CREATE TEMP TABLE matched AS {sql}")
        except Exception as exc:
            raise ValidationError(f"{source}: cannot match labels: {str(exc).splitlines()[0]}") from None
        total, hits = first(con.execute("SELECT count(*), count(predicted_at) FROM matched")) or (0, 0)
        folder = inside_box(root / deployment / "labels", root.parent)
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp, final = folder / f".tmp-{os.getpid()}-{name}.parquet", folder / f"{name}.parquet"
        crypt.copy(con, "SELECT * FROM matched WHERE predicted_at IS NOT NULL", tmp)  # encrypted when the box is
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        with db.atomic():
            os.rename(tmp, final)
            rel = str(final.relative_to(root.parent))
            db.execute(
                "INSERT INTO label_batches (deployment, path, rows, matched, source, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (deployment, rel, int(total), int(hits), str(source), clock.iso(), actor),
            )
            audit.record(actor, "labels.ingest", deployment, {"rows": int(total), "matched": int(hits), "mode": mode})
        return LabelResult(deployment, int(total), int(hits), rel, mode)
    finally:
        con.close()
