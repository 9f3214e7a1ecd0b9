"""One data subject's records in the prediction log and its label batches: find, read and remove them.

A logged record is the subject's when one of its rows carries a subject key with the subject's
value, in the `entity` JSON (entity requests, sticky keys) or in the `inputs` JSON (a rows request
whose model takes the key as an input; the `n.`/`c.` typed columns are computed from those inputs,
so they go with the record). A record is one request: the whole record is removed, with the other
rows of a multi-row request (counted as `other_rows`). A label row is the subject's when its
`request_id` is one of those records'. Files are read and rewritten through mlbox.store.crypt, as
the writer writes them (pyarrow, snappy; encrypted in an encrypted box), under a new name: temporary
name and fsync, then the catalog row and the rename in one meta.db transaction, then the old file is
unlinked. A crash before the unlink leaves a file no catalog row names; `sweep` removes it (and
temporary files of dead processes) under the write lock.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbox import clock
from mlbox.features.offline import connect, first
from mlbox.features.pit import lit
from mlbox.store import crypt
from mlbox.store.artifacts import pid_alive
from mlbox.store.sqlite import Database

TMP = re.compile(r"\.tmp-(\d+)-")


@dataclass(frozen=True)
class FileHit:
    """One log or label file holding the subject's records: how many of its rows are theirs."""

    store: str  # "predictions" | "labels"
    deployment: str
    path: str  # relative to the box
    rows: int
    matched: int
    other_rows: int = 0  # rows of other people in the subject's multi-row requests, removed with them


def _json_values(column: str, key: str) -> str:
    """The list of `key`'s values (as text) in a JSON array of objects, or a single object."""
    path = '$."' + key.replace('"', "") + '"'
    return (
        f"(CASE WHEN json_valid({column}) THEN (CASE json_type({column}) "
        f"WHEN 'ARRAY' THEN json_extract_string({column}, {lit('$[*].' + path[2:])}) "
        f"WHEN 'OBJECT' THEN [json_extract_string({column}, {lit(path)})] END) END)"
    )


def _has(values: str, value: Any) -> str:
    if isinstance(value, int):  # 123, "123" and 123.0 are the same key
        numeric = f"len(list_filter({values}, lambda x: TRY_CAST(x AS DOUBLE) = {float(value)!r})) > 0"
        return f"(list_contains({values}, {lit(str(value))}) OR {numeric})"
    return f"list_contains({values}, {lit(str(value))})"


def record_predicate(values: Mapping[str, Any]) -> str:
    """A DuckDB condition true for a logged record carrying any (key, value) of `values` in entity or inputs."""
    parts = [_has(_json_values(col, k), v) for k, v in values.items() for col in ("entity", "inputs")]
    return "(" + " OR ".join(parts) + ")" if parts else "false"


def _rows_in(column: str) -> str:
    return f"(CASE WHEN json_valid({column}) AND json_type({column}) = 'ARRAY' THEN json_array_length({column}) ELSE 1 END)"


def prediction_files(db: Database) -> list[dict[str, Any]]:
    return db.query("SELECT id, deployment, path FROM prediction_batches ORDER BY id")


def label_files(db: Database) -> list[dict[str, Any]]:
    return db.query("SELECT id, deployment, path FROM label_batches ORDER BY id")


def find(db: Database, home: Path, values: Mapping[str, Any]) -> tuple[list[FileHit], set[str]]:
    """(prediction-log files with the subject's records, their request ids); reads, never writes."""
    pred, hits, ids = record_predicate(values), [], set()
    con = connect(threads=1)
    try:
        for row in prediction_files(db):
            src = crypt.source(con, [home / row["path"]])
            got = con.execute(f"SELECT request_id, {_rows_in('inputs')} FROM {src} WHERE ({pred}) IS TRUE").fetchall()
            if got:
                total = first(con.execute(f"SELECT count(*) FROM {src}"))
                ids |= {str(r[0]) for r in got}
                hits.append(FileHit(store="predictions", deployment=row["deployment"], path=row["path"],
                                    rows=int(total[0]) if total else 0, matched=len(got),
                                    other_rows=sum(max(int(r[1] or 1) - 1, 0) for r in got)))  # fmt: skip
        for row in label_files(db) if ids else []:
            src = crypt.source(con, [home / row["path"]])
            con.execute("CREATE OR REPLACE TEMP TABLE __ids AS SELECT unnest(?::VARCHAR[]) AS request_id", [sorted(ids)])
            got_row = first(con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE request_id IN (SELECT request_id FROM __ids)) FROM {src}"
            ))  # fmt: skip
            if got_row and got_row[1]:
                hits.append(FileHit(store="labels", deployment=row["deployment"], path=row["path"],
                                    rows=int(got_row[0]), matched=int(got_row[1])))  # fmt: skip
    finally:
        con.close()
    return hits, ids


def read(db: Database, home: Path, values: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the subject's logged records, the label rows of their requests), for the right of access."""
    hits, ids = find(db, home, values)
    pred = record_predicate(values)
    records: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    con = connect(threads=1)
    try:
        for hit in hits:
            src = crypt.source(con, [home / hit.path])
            if hit.store == "predictions":
                cur = con.execute(
                    "SELECT CAST(ts AS VARCHAR) AS ts, request_id, deployment, model, variant, shadow, entity, inputs, outputs, "
                    f"error FROM {src} WHERE ({pred}) IS TRUE ORDER BY ts"
                )
            else:
                cur = con.execute(
                    f"SELECT * FROM {src} WHERE request_id IN (SELECT unnest(?::VARCHAR[]))", [sorted(ids)]
                )
            names = [d[0] for d in cur.description or []]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            for r in rows:
                r["file"] = hit.path
            (records if hit.store == "predictions" else labels).extend(rows)
    finally:
        con.close()
    return records, labels


def _write_like_the_writer(table: Any, folder: Path) -> tuple[Path, Path]:
    """Write `table` under a temporary name in `folder`, fsynced: the one place this module writes a file."""
    name = uuid.uuid4().hex
    tmp, final = folder / f".tmp-{os.getpid()}-{name}.parquet", folder / f"{name}.parquet"
    crypt.write_table(table, tmp, compression="snappy")
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o444)
    return tmp, final


def remove(db: Database, home: Path, hits: list[FileHit], values: Mapping[str, Any], ids: set[str]) -> list[str]:
    """Rewrite every hit file without the subject's rows (a file left empty is dropped); the old paths removed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pred, removed = record_predicate(values), []
    con = connect(threads=1)
    try:
        for hit in hits:
            old = home / hit.path
            table = crypt.read_table(old)
            con.register("__t", table)
            try:
                if hit.store == "predictions":
                    keep = con.sql(f"SELECT ({pred}) IS NOT TRUE AS k FROM __t").to_arrow_table().column("k")
                else:
                    keep = pc.invert(pc.is_in(table.column("request_id"), value_set=pa.array(sorted(ids), pa.string())))
            finally:
                con.unregister("__t")
            kept = table.filter(keep)
            tmp = final = None
            if kept.num_rows:
                tmp, final = _write_like_the_writer(kept, old.parent)
            try:
                with db.atomic():
                    if final is None:
                        db.execute(f"DELETE FROM {_table(hit)} WHERE path = ?", (hit.path,))
                    elif hit.store == "predictions":
                        lo, hi = pc.min_max(kept.column("ts")).values()
                        db.execute(
                            "UPDATE prediction_batches SET path = ?, rows = ?, min_ts = ?, max_ts = ? WHERE path = ?",
                            (str(final.relative_to(home)), kept.num_rows, clock.iso(lo.as_py()), clock.iso(hi.as_py()), hit.path),
                        )
                    else:
                        db.execute(
                            "UPDATE label_batches SET path = ?, rows = rows - ?, matched = ? WHERE path = ?",
                            (str(final.relative_to(home)), table.num_rows - kept.num_rows, kept.num_rows, hit.path),
                        )
                    if tmp is not None and final is not None:
                        os.rename(tmp, final)
            except BaseException:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                if final is not None and not db.scalar(f"SELECT 1 FROM {_table(hit)} WHERE path = ?", (str(final.relative_to(home)),)):
                    final.unlink(missing_ok=True)
                raise
            old.unlink(missing_ok=True)  # committed: a crash before this line leaves an orphan for `sweep`
            removed.append(hit.path)
    finally:
        con.close()
    return removed


def _table(hit: FileHit) -> str:
    return "prediction_batches" if hit.store == "predictions" else "label_batches"


def sweep(db: Database, predictions: Path) -> list[Path]:
    """Remove log and label files no catalog row names (a rewrite killed before its unlink), and dead temporaries."""
    removed: list[Path] = []
    if not predictions.is_dir():
        return removed
    home = predictions.parent
    with db.atomic():  # the write lock: no writer's rename-and-commit is in flight meanwhile
        known = {r["path"] for r in db.query("SELECT path FROM prediction_batches UNION SELECT path FROM label_batches")}
        for path in predictions.rglob("*.parquet"):
            match = TMP.match(path.name)
            if match:
                if pid_alive(int(match.group(1))):
                    continue
            elif str(path.relative_to(home)) in known:
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
