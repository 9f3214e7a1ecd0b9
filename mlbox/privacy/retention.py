"""Retention: `mlbox privacy purge` and the `retention` job remove what is older than its declared retention.

What has a retention: each feature view (`retention: 400d` in features.yaml; the latest version's
value applies to every version of the view, since they hold the same data), the prediction logs
(`privacy.prediction_log_retention`) and their label batches (`privacy.labels_retention`), one
deployment's both overridden by `privacy.deployment_retention`. A row's age is its event time: a
feature row's timestamp column, a logged prediction's `ts`, a label's `predicted_at`. Nothing
without a retention is touched.

Per target a purge takes the files holding rows before the cutoff: a file wholly before it is
dropped, a file straddling it is rewritten without those rows (temporary file, fsync, rename and
catalog change in one transaction). Feature batches go through the batch-rewrite primitive
(`mlbox.features.rewrite`), which keeps every snapshot readable; the online store loses the values
past retention too. Prediction-log files inside retention are pruned by their cataloged time range
unread; label batches have none in the catalog and are counted file by file. Staged pushes are
flushed before a purge (a dry run does not flush, so it does not count them offline). Each target
that lost rows is a row of `purges` (mlbox.store.purges), which training sets, `features
show`/`lineage` and the records of processing state; each run is one audit entry `privacy.purge`
with its counts. A dry run reads and counts, and writes nothing.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox import clock
from mlbox.errors import UsageError
from mlbox.features.offline import connect, first
from mlbox.features.pit import lit, q
from mlbox.store import crypt, purges
from mlbox.types import check_name, parse_duration

if TYPE_CHECKING:
    import duckdb

    from mlbox.box import Box
    from mlbox.features.catalog import ViewVersion

LOG_SETTINGS = {"predictions": "privacy.prediction_log_retention", "labels": "privacy.labels_retention"}


@dataclass(frozen=True, kw_only=True)
class Removal:
    """What one purge removes from one target (a view version or a deployment's log or labels)."""

    store: str  # features, predictions or labels
    target: str
    retention: str
    cutoff: str  # ISO-8601 UTC: rows before it go
    rows: int
    files: int  # files dropped or rewritten
    online_rows: int = 0  # features: online values past retention

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class PurgeResult:
    """One purge run: when, whether it was a dry run, what it removed, and what declares no retention."""

    at: str
    dry_run: bool
    removals: tuple[Removal, ...]
    unlimited: tuple[str, ...]  # targets with no retention declared: kept whatever their age

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.removals)

    @property
    def files(self) -> int:
        return sum(r.files for r in self.removals)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at, "dry_run": self.dry_run, "rows": self.rows, "files": self.files,
            "removals": [r.as_dict() for r in self.removals], "unlimited": list(self.unlimited),
        }  # fmt: skip


def log_retention(box: Box, store: str) -> str | None:
    """The prediction log's or labels' retention setting, checked; None when not set (kept forever)."""
    name = LOG_SETTINGS[store]
    text = str(box.settings[name] or "").strip()
    if not text:
        return None
    try:
        parse_duration(text)
    except UsageError as exc:
        raise UsageError(f"setting {name}: {exc.message}", hint=exc.hint) from None
    return text


def deployment_retention(box: Box) -> dict[str, str]:
    """`privacy.deployment_retention` (`fraud_api=30d, churn_api=2w`): per deployment, its log's and labels' retention."""
    name, out = "privacy.deployment_retention", {}
    for part in str(box.settings[name] or "").split(","):
        if not part.strip():
            continue
        deployment, sep, text = (p.strip() for p in part.partition("="))
        try:
            if not sep or not deployment:
                raise UsageError(f"{part.strip()!r} is not DEPLOYMENT=DURATION", hint="e.g. fraud_api=30d, churn_api=2w")
            check_name(deployment, "deployment name")
            parse_duration(text)
        except UsageError as exc:
            raise UsageError(f"setting {name}: {exc.message}", hint=exc.hint) from None
        out[deployment] = text
    return out


def view_retention(box: Box) -> dict[str, str | None]:
    """Each view's retention, as its latest version declares it."""
    return {v.name: v.view.retention for v in box.features.catalog.latest_views()}


def purge(box: Box, actor: str, *, dry_run: bool = False, now: datetime | None = None, job_id: int | None = None) -> PurgeResult:
    """Remove every row older than its retention at `now` (default: the clock); with `dry_run`, only count."""
    at = clock.now() if now is None else now
    log = {store: log_retention(box, store) for store in LOG_SETTINGS}  # bad settings stop the run before any change
    overrides = deployment_retention(box)
    fs = box.features
    retention = view_retention(box)
    for name, text in retention.items():
        stamps = sorted({v.view.timestamp for v in fs.catalog.versions(name)})
        if text is not None and len(stamps) > 1:  # one row filter serves every version (mlbox.features.rewrite)
            raise UsageError(
                f"view {name!r} names its timestamp differently across versions ({', '.join(stamps)}), so its retention "
                "cannot be applied",
                hint="a purge needs one timestamp column per view: declare a new view rather than renaming it",
            )
    if not dry_run and fs.pending_pushes():
        fs.flush(actor=actor)  # staged pushes become batches first, so they are purged like the rest
    removals: list[Removal] = []
    unlimited: list[str] = []
    for name, text in retention.items():
        if text is None:
            unlimited += [f"features:{v.ref}" for v in fs.catalog.versions(name)]
            continue
        removals += _features(box, name, text, at - timedelta(seconds=parse_duration(text)), dry_run, actor, job_id)
    for store, default in log.items():
        table = "prediction_batches" if store == "predictions" else "label_batches"
        for deployment in [r["deployment"] for r in box.db.query(f"SELECT DISTINCT deployment FROM {table} ORDER BY deployment")]:
            text = overrides.get(deployment, default)
            if text is None:
                unlimited.append(f"{store}:{deployment}")
                continue
            cutoff = at - timedelta(seconds=parse_duration(text))
            found = _log_files(box, store, deployment, text, cutoff, dry_run, actor, job_id)
            if found is not None:
                removals.append(found)
    result = PurgeResult(at=clock.iso(at), dry_run=dry_run, removals=tuple(removals), unlimited=tuple(unlimited))
    if not dry_run:
        box.audit.record(actor, "privacy.purge", "retention", {
            "at": result.at, "rows": result.rows, "files": result.files, "job": job_id,
            "removed": {f"{r.store}:{r.target}": r.rows for r in removals},
            "online_rows": sum(r.online_rows for r in removals),
        })  # fmt: skip
    return result


# feature views ---------------------------------------------------------------
def _features(
    box: Box, name: str, text: str, cutoff: datetime, dry_run: bool, actor: str, job_id: int | None
) -> list[Removal]:
    """Purge every version of view `name` through the batch-rewrite primitive, then its online values."""
    from mlbox.features import rewrite

    fs = box.features
    versions = {v.version: v for v in fs.catalog.versions(name)}
    drop = rewrite.older_than(versions[max(versions)], cutoff)
    iso = clock.iso(cutoff)

    def record(result: rewrite.RewriteResult) -> None:  # in the rewrite's own transaction
        for number in sorted({b.version for b in result.batches}):
            mine = [b for b in result.batches if b.version == number]
            purges.record(box.db, store="features", target=versions[number].ref, retention=text, cutoff=iso,
                          rows=sum(b.removed for b in mine), files=len(mine), actor=actor, commit_seq=result.commit_seq,
                          job_id=job_id)  # fmt: skip

    result = rewrite.rewrite_view(fs.catalog, fs.offline, name, drop, actor=actor, reason="retention", dry_run=dry_run,
                                  on_commit=record)  # fmt: skip
    out = []
    for number, version in sorted(versions.items()):
        mine = [b for b in result.batches if b.version == number]
        online = _online_stale(box, version, cutoff, delete=not dry_run)
        if mine or online:
            out.append(Removal(store="features", target=version.ref, retention=text, cutoff=iso,
                               rows=sum(b.removed for b in mine), files=len(mine), online_rows=online))  # fmt: skip
    return out


def _online_stale(box: Box, version: ViewVersion, cutoff: datetime, *, delete: bool) -> int:
    """Online values whose event time is before `cutoff`: counted, or deleted in one online.db transaction."""
    from mlbox.features.online import table_name

    online = box.features.online
    name = table_name(version)
    if not online.has_table(name):
        return 0
    micros = int(cutoff.timestamp() * 1_000_000)
    if not delete:
        return int(online.db.scalar(f'SELECT count(*) FROM {q(name)} WHERE "__ts" < ?', (micros,)))
    with online.writer.atomic():
        return int(online.writer.execute(f'DELETE FROM {q(name)} WHERE "__ts" < ?', (micros,)).rowcount)


# prediction logs and labels ---------------------------------------------------------
def _log_files(
    box: Box, store: str, deployment: str, text: str, cutoff: datetime, dry_run: bool, actor: str, job_id: int | None
) -> Removal | None:
    """Purge one deployment's prediction-log files (`ts`) or label batches (`predicted_at`) before `cutoff`."""
    column = "ts" if store == "predictions" else "predicted_at"
    if store == "predictions":  # the catalog's time ranges prune files wholly inside retention unread
        rows = box.db.query(
            "SELECT id, path, rows FROM prediction_batches WHERE deployment = ? AND min_ts < ? ORDER BY id",
            (deployment, clock.iso(cutoff)),
        )
    else:
        rows = box.db.query("SELECT id, path, rows FROM label_batches WHERE deployment = ? ORDER BY id", (deployment,))
    where = f"{q(column)} < {lit(cutoff.isoformat())}::TIMESTAMPTZ"
    con = connect()
    removed, files = 0, 0
    try:
        for row in rows:
            path = box.paths.home / row["path"]
            old = _count(con, path, where)
            if old == 0:
                continue
            removed, files = removed + old, files + 1
            if not dry_run:
                _rewrite_log_file(box, store, row, path, column, cutoff, old)
    finally:
        con.close()
    if files == 0:
        return None
    removal = Removal(store=store, target=deployment, retention=text, cutoff=clock.iso(cutoff), rows=removed, files=files)
    if not dry_run:
        with box.db.atomic():
            purges.record(box.db, store=store, target=deployment, retention=text, cutoff=removal.cutoff, rows=removed,
                          files=files, actor=actor, job_id=job_id)  # fmt: skip
    return removal


def _rewrite_log_file(box: Box, store: str, row: dict[str, Any], path: Path, column: str, cutoff: datetime, old: int) -> None:
    """Drop `path` (all its rows are old) or replace it by a copy without the old rows, with its catalog row.

    The copy is written as the log's writer writes (pyarrow, snappy, the file's own schema, encrypted in
    an encrypted box), so monitoring reads it like any other file. A crash after the commit and before
    the unlink leaves a file no catalog row names, which the log's sweep (mlbox.serve.predlog.subject.sweep)
    removes.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    table_name = "prediction_batches" if store == "predictions" else "label_batches"
    table = crypt.read_table(path)
    times = table.column(column)
    kept = table.filter(pc.fill_null(pc.greater_equal(times, pa.scalar(cutoff, type=times.type)), False))
    if kept.num_rows == 0:
        with box.db.atomic():
            box.db.execute(f"DELETE FROM {table_name} WHERE id = ?", (row["id"],))
        path.unlink(missing_ok=True)
        return
    name = uuid.uuid4().hex
    tmp, final = path.with_name(f".tmp-{os.getpid()}-{name}.parquet"), path.with_name(f"{name}.parquet")
    try:
        crypt.write_table(kept, tmp, compression="snappy")  # encrypted when the box is
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o444)
        rel = str(final.relative_to(box.paths.home))
        with box.db.atomic():
            if store == "predictions":
                lo, hi = pc.min_max(kept.column(column)).values()
                box.db.execute(
                    "UPDATE prediction_batches SET path = ?, rows = ?, min_ts = ?, max_ts = ? WHERE id = ?",
                    (rel, kept.num_rows, clock.iso(lo.as_py()), clock.iso(hi.as_py()), row["id"]),
                )
            else:
                box.db.execute("UPDATE label_batches SET path = ?, matched = ?, rows = rows - ? WHERE id = ?",
                               (rel, kept.num_rows, old, row["id"]))  # fmt: skip
            os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    path.unlink(missing_ok=True)  # committed: the old file is named by no catalog row now


def _count(con: duckdb.DuckDBPyConnection, path: Path, where: str) -> int:
    if not path.exists():
        return 0
    return int((first(con.execute(f"SELECT count(*) FROM {crypt.source(con, [path])} WHERE {where}")) or (0,))[0])
