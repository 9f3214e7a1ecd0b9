"""Rewriting a view's immutable batches without some rows (erasure, retention), under a new snapshot.

    rewrite_view(catalog, offline, name, drop, *, actor, reason, dry_run=False,
                 on_commit=None, after_commit=None) -> RewriteResult
    drop: RowFilter | Callable[[ViewVersion], RowFilter | None]   (None: leave that version alone)

`drop` is a `RowFilter` (build it with `key_filter` or `older_than`: values become typed SQL
literals, never text pasted from input), or a function giving one per version. For every version of view `name`, each live batch
holding matching rows is copied without them to a new immutable batch (temporary name, fsync,
statistics recomputed). Then, in one meta.db transaction, the new files are renamed into place,
their catalog rows added (`replaces` names the old batch, `visible_seq` keeps its visibility,
so a snapshot older than the rewrite reads the same rows minus the removed ones), the old rows
marked `superseded_seq` with their statistics (which can hold values) cleared, a
`feature_rewrites` row added, and `on_commit(result)` called (the caller's audit entry). Only
after the commit are the old files unlinked.

Unlink, not overwrite-then-unlink: on SSDs (wear levelling, remapped blocks) and copy-on-write
filesystems (btrfs, ZFS, APFS) an overwrite writes new blocks and leaves the old ones where they
were, so it buys nothing; what protects the data is that no catalog row names the file and the
blocks are freed (in an encrypted box the freed blocks hold only ciphertext: every file this
module writes goes through `mlbox.store.crypt`). A crash between the
commit and the unlink leaves superseded files that no live catalog row names: the offline
store's sweep (`OfflineStore.sweep`, run at every open of the feature store) removes them, as it
removes temporary files of dead processes after a crash before the commit.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from mlbox import clock
from mlbox.errors import Conflict, ValidationError
from mlbox.features.catalog import Batch, Catalog, ViewVersion
from mlbox.features.offline import BATCH_COMPRESSION, TMP_PREFIX, OfflineStore, first, fsync_dir, inside_box
from mlbox.features.online import coerce_key
from mlbox.features.pit import lit, q
from mlbox.features.stats import batch_stats
from mlbox.store import crypt
from mlbox.store.artifacts import file_sha256


@dataclass(frozen=True)
class RowFilter:
    """Rows to remove: a DuckDB boolean expression over a batch's columns whose values are typed literals."""

    sql: str
    description: str  # names columns only, never values (it goes into the audit log)


def key_filter(version: ViewVersion, values: Mapping[str, Any]) -> RowFilter | None:
    """Rows whose join keys equal `values` (only the keys this version's entity has); None if it has none of them.

    Values are coerced to the key's type (`coerce_key`): an integer key becomes an integer literal, a
    string key a quoted string literal.
    """
    keys = version.entity.join_keys
    parts, names = [], []
    for name, value in values.items():
        if name not in keys:
            continue
        typed = coerce_key(value, keys[name], name)
        parts.append(f"{q(name)} = {typed}" if isinstance(typed, int) else f"{q(name)} = {lit(typed)}")
        names.append(name)
    if not parts:
        return None
    return RowFilter(" AND ".join(parts), "entity " + ", ".join(sorted(names)))


def older_than(version: ViewVersion, cutoff: datetime) -> RowFilter:
    """Rows whose event timestamp is before `cutoff` (timezone-aware)."""
    if cutoff.tzinfo is None:
        raise ValidationError("a retention cutoff must carry a timezone")
    return RowFilter(
        f"{q(version.view.timestamp)} < CAST({lit(clock.iso(cutoff))} AS TIMESTAMPTZ)", f"{version.view.timestamp} before cutoff"
    )


@dataclass(frozen=True)
class BatchRewrite:
    """One batch touched by a rewrite: its rows, the rows removed, and the batch that replaced it (None: all removed)."""

    view: str
    version: int
    batch: int
    path: str
    rows: int
    removed: int
    new_batch: int | None = None
    new_path: str | None = None


@dataclass(frozen=True)
class RewriteResult:
    """What one rewrite did (or, dry run, would do): the batches touched and the snapshot that committed it."""

    view: str
    dry_run: bool
    batches: tuple[BatchRewrite, ...] = ()
    commit_seq: int | None = None
    removed_files: tuple[str, ...] = field(default=())

    @property
    def rows_removed(self) -> int:
        return sum(b.removed for b in self.batches)

    def as_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "dry_run": self.dry_run,
            "rows_removed": self.rows_removed,
            "commit_seq": self.commit_seq,
            "batches": [b.__dict__ for b in self.batches],
            "removed_files": list(self.removed_files),
        }


def _batch_relation(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """The relation of one batch file: every read of a batch by a rewrite, an erasure or an export goes through it."""
    return crypt.source(con, [str(path)])


def matching_rows(con: duckdb.DuckDBPyConnection, path: Path, drop: RowFilter) -> tuple[int, int]:
    """(rows, rows matching `drop`) of one batch file."""
    row = first(con.execute(f"SELECT count(*), count(*) FILTER (WHERE ({drop.sql}) IS TRUE) FROM {_batch_relation(con, path)}"))
    return (int(row[0]), int(row[1])) if row else (0, 0)


def select_matching(
    con: duckdb.DuckDBPyConnection, path: Path, drop: RowFilter, columns: str = "*"
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of one batch file's rows matching `drop` (an erasure's or an export's read)."""
    cur = con.execute(f"SELECT {columns} FROM {_batch_relation(con, path)} WHERE ({drop.sql}) IS TRUE")
    return [d[0] for d in cur.description or []], cur.fetchall()


def _write_without(con: duckdb.DuckDBPyConnection, path: Path, drop: RowFilter, tmp: Path) -> tuple[int, dict[str, Any]]:
    """Copy `path` to `tmp` without the rows matching `drop`, fsynced: the one place this module writes a batch."""
    query = f"SELECT * FROM {_batch_relation(con, path)} WHERE ({drop.sql}) IS NOT TRUE"
    written = crypt.copy(con, query, tmp, compression=BATCH_COMPRESSION)
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    return written.rows, written.columns


@dataclass
class _Staged:
    version: ViewVersion
    old: Batch
    removed: int
    tmp: Path | None  # None: every row removed, no new batch
    final: Path | None = None
    rows: int = 0
    sha256: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


Drop = RowFilter | Callable[[ViewVersion], RowFilter | None]


def _filter(drop: Drop, version: ViewVersion) -> RowFilter | None:
    return drop if isinstance(drop, RowFilter) else drop(version)


def plan(catalog: Catalog, offline: OfflineStore, name: str, drop: Drop) -> list[BatchRewrite]:
    """The live batches of every version of `name` holding rows that match `drop`; touches nothing."""
    con = offline.connect()
    try:
        out = []
        for version in catalog.versions(name):
            rows_filter = _filter(drop, version)
            if rows_filter is None:
                continue
            for batch, path in offline.files(version):
                rows, hits = matching_rows(con, path, rows_filter)
                if hits:
                    out.append(BatchRewrite(view=name, version=version.version, batch=batch.id, path=batch.path, rows=rows, removed=hits))
        return out
    finally:
        con.close()


def rewrite_view(
    catalog: Catalog,
    offline: OfflineStore,
    name: str,
    drop: Drop,
    *,
    actor: str,
    reason: str,
    dry_run: bool = False,
    on_commit: Callable[[RewriteResult], None] | None = None,
    after_commit: Callable[[], None] | None = None,
) -> RewriteResult:
    """Rewrite every version of view `name` without the rows matching `drop` (see the module docstring).

    `reason` ("erasure", "retention") is recorded in `feature_rewrites`. `on_commit(result)` runs
    inside the committing transaction (an audit entry commits with the rewrite or not at all).
    `after_commit` runs between the commit and the unlinking of the old files (tests use it to
    kill the process there). A batch rewritten concurrently by someone else raises Conflict and
    nothing is committed.
    """
    touched = plan(catalog, offline, name, drop)
    if dry_run or not touched:
        return RewriteResult(view=name, dry_run=dry_run, batches=tuple(touched))
    versions = {v.version: v for v in catalog.versions(name)}
    staged: list[_Staged] = []
    con = offline.connect()
    try:
        for t in touched:
            version = versions[t.version]
            live = {b.id: b for b in catalog.batches(name, t.version)}
            if t.batch not in live:
                raise Conflict(f"batch {t.batch} of {name!r} was rewritten meanwhile", hint="run the command again")
            old = live[t.batch]
            if t.removed == t.rows:
                staged.append(_Staged(version, old, t.removed, None))
                continue
            folder = inside_box(offline.root / name / f"v{t.version}", offline.home)
            stem = uuid.uuid4().hex
            tmp = folder / f"{TMP_PREFIX}{os.getpid()}-{stem}.parquet"
            item = _Staged(version, old, t.removed, tmp, folder / f"{stem}.parquet")
            staged.append(item)
            rows_filter = _filter(drop, version)
            if rows_filter is None:  # plan() found rows with it: only a `drop` that changed its mind gets here
                raise ValidationError(f"the row filter of {name}@{t.version} changed during the rewrite")
            item.rows, written = _write_without(con, offline.home / old.path, rows_filter, tmp)
            item.sha256 = file_sha256(tmp)
            item.stats = batch_stats(con, str(tmp), version.view, item.rows, written)
            os.chmod(tmp, 0o444)
        result = _commit(catalog, offline, name, reason, actor, staged, on_commit)
    except BaseException:
        known = catalog.all_batch_paths()
        for item in staged:
            if item.tmp is not None:
                item.tmp.unlink(missing_ok=True)
            if item.final is not None and str(item.final.relative_to(offline.home)) not in known:
                item.final.unlink(missing_ok=True)  # renamed, then the commit failed: no file without its row
        raise
    finally:
        con.close()
    if after_commit is not None:
        after_commit()
    for item in staged:  # committed: the old files are orphans now; a crash here leaves them to the sweep
        (offline.home / item.old.path).unlink(missing_ok=True)
    for folder in {(offline.home / item.old.path).parent for item in staged}:
        fsync_dir(folder)
    return result


def _commit(
    catalog: Catalog,
    offline: OfflineStore,
    name: str,
    reason: str,
    actor: str,
    staged: list[_Staged],
    on_commit: Callable[[RewriteResult], None] | None,
) -> RewriteResult:
    """Rename the new files into place and record the rewrite, in one transaction."""
    done: list[BatchRewrite] = []
    with catalog.db.atomic():
        for item in staged:
            live = catalog.db.scalar("SELECT superseded_seq IS NULL FROM feature_batches WHERE id = ?", (item.old.id,))
            if not live:
                raise Conflict(f"batch {item.old.id} of {name!r} was rewritten meanwhile", hint="run the command again")
        for item in staged:
            new: Batch | None = None
            if item.tmp is not None and item.final is not None:
                final = item.final
                os.rename(item.tmp, final)
                fsync_dir(final.parent)
                new = catalog.add_batch(
                    item.version,
                    path=str(final.relative_to(offline.home)),
                    source=item.old.source,
                    row_count=item.rows,
                    min_ts=item.stats["ts_min"],
                    max_ts=item.stats["ts_max"],
                    sha256=item.sha256,
                    stats=item.stats,
                    actor=actor,
                )
                catalog.db.execute(
                    "UPDATE feature_batches SET visible_seq = ?, replaces = ? WHERE id = ?",
                    (item.old.visible_at, item.old.id, new.id),
                )
            done.append(
                BatchRewrite(
                    view=name,
                    version=item.version.version,
                    batch=item.old.id,
                    path=item.old.path,
                    rows=item.old.row_count,
                    removed=item.removed,
                    new_batch=new.id if new else None,
                    new_path=new.path if new else None,
                )
            )
        seq = catalog.mark_superseded([item.old.id for item in staged])
        for version in sorted({item.version.version for item in staged}):
            mine = [b for b in done if b.version == version]
            catalog.db.execute(
                "INSERT INTO feature_rewrites (view, version, commit_seq, reason, batches_before, batches_after, rows_removed, "
                "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, version, seq, reason, len(mine), sum(1 for b in mine if b.new_batch), sum(b.removed for b in mine),
                 clock.iso(), actor),
            )  # fmt: skip
        result = RewriteResult(
            view=name, dry_run=False, batches=tuple(done), commit_seq=seq, removed_files=tuple(item.old.path for item in staged)
        )
        if on_commit is not None:
            on_commit(result)
    return result
