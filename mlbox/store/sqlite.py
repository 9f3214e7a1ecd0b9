"""SQLite connections for meta.db and online.db: WAL, busy_timeout, foreign keys, `atomic()`.

One writer connection per process, shared by its threads behind a lock. The outermost
`atomic()` block starts with `BEGIN IMMEDIATE`, so a transaction takes the write lock
before it reads: in WAL mode a deferred transaction that reads and then writes can fail
at once with "database is locked" when another process committed in between, without
waiting for busy_timeout. Nested blocks become savepoints.

`db.utils` is the sqlite-utils view of the same connection (bulk inserts, upserts, schema
introspection). It is imported on first use: sqlite-utils imports pandas, which would add
most of a second to every CLI command that only reads a few rows.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox.errors import StoreError

if TYPE_CHECKING:
    import sqlite_utils

Params = Sequence[Any] | dict[str, Any]


class Database:
    """A SQLite file opened the mlbox way. `db.utils` is the sqlite-utils view of the same connection."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 30000, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: could not switch to WAL journal mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        self.conn = conn
        self._lock = threading.RLock()

    @cached_property
    def utils(self) -> sqlite_utils.Database:
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def atomic(self) -> Iterator[Database]:
        """A transaction; nested blocks are savepoints. The outermost block holds the write lock."""
        with self._lock:
            if self.conn.in_transaction:
                name = f"sp_{secrets.token_hex(6)}"
                self.conn.execute(f"SAVEPOINT {name}")
                try:
                    yield self
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                        self.conn.execute(f"RELEASE SAVEPOINT {name}")
                    raise
                else:
                    self.conn.execute(f"RELEASE SAVEPOINT {name}")
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            else:
                try:
                    self.conn.execute("COMMIT")
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise

    @contextmanager
    def snapshot(self) -> Iterator[Database]:
        """A read transaction: one consistent view of the database that never blocks writers."""
        with self._lock:
            if self.conn.in_transaction:
                yield self
                return
            self.conn.execute("BEGIN DEFERRED")
            try:
                yield self
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")

    def execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        with self._lock:
            return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Params]) -> sqlite3.Cursor:
        with self._lock:
            return self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self.conn.execute(sql, params).fetchall()]

    def one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        with self._lock:
            row = self.conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def scalar(self, sql: str, params: Params = ()) -> Any:
        with self._lock:
            row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def integrity(self) -> list[str]:
        """Problems found by SQLite's integrity and foreign-key checks; empty when healthy."""
        problems = [r[0] for r in self.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        for row in self.execute("PRAGMA foreign_key_check").fetchall():
            problems.append(f"foreign key violation in {row[0]} row {row[1]} -> {row[2]}")
        return problems
