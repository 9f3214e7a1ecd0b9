"""The record of retention purges in meta.db (`purges`): what each purge removed, where, up to which cutoff.

A row per store and target (a view version `name@version`, or a deployment for prediction logs and
labels) that lost rows. Training sets, `features show`/`lineage` and the records of processing read
it to state what is gone ("rows before T purged on D by retention 400d"); `mlbox privacy purge`
writes it in the transaction that commits the purge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlbox import clock
from mlbox.store.sqlite import Database

STORES = ("features", "predictions", "labels")


@dataclass(frozen=True, kw_only=True)
class Purge:
    """One recorded purge of one store's target: rows and files removed, cutoff, when, by whom."""

    id: int
    store: str
    target: str
    retention: str
    cutoff: str  # ISO-8601 UTC: every row whose time is before it was removed
    rows: int
    files: int
    commit_seq: int | None  # features: the catalog snapshot at which the purge became visible
    purged_at: str
    purged_by: str
    job_id: int | None

    def statement(self) -> str:
        """The sentence a training set or lineage carries: what is gone and why."""
        return (
            f"{self.target}: {self.rows} row(s) before {self.cutoff} purged on {self.purged_at[:10]} "
            f"by retention {self.retention}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "statement": self.statement()}


def record(
    db: Database,
    *,
    store: str,
    target: str,
    retention: str,
    cutoff: str,
    rows: int,
    files: int,
    actor: str,
    commit_seq: int | None = None,
    job_id: int | None = None,
) -> int:
    """Insert one purge row; call inside the transaction that commits the purge."""
    assert store in STORES
    row_id = db.execute(
        "INSERT INTO purges (store, target, retention, cutoff, rows, files, commit_seq, purged_at, purged_by, job_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (store, target, retention, cutoff, rows, files, commit_seq, clock.iso(), actor, job_id),
    ).lastrowid
    return int(row_id or 0)


def of(db: Database, store: str | None = None, targets: list[str] | None = None) -> list[Purge]:
    """Purges, oldest first: of one store, and of some targets only when given."""
    sql, params = "SELECT * FROM purges WHERE 1 = 1", []
    if store is not None:
        sql += " AND store = ?"
        params.append(store)
    if targets is not None:
        if not targets:
            return []
        sql += f" AND target IN ({','.join('?' * len(targets))})"
        params += targets
    return [Purge(**r) for r in db.query(sql + " ORDER BY id", params)]


def last(db: Database) -> Purge | None:
    row = db.one("SELECT * FROM purges ORDER BY id DESC LIMIT 1")
    return None if row is None else Purge(**row)
