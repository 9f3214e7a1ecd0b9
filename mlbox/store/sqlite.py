"""SQLite connections for meta.db and online.db: WAL, busy_timeout, foreign keys, `atomic()`.

One writer connection per process, shared by its threads behind a lock. The outermost
`atomic()` block starts with `BEGIN IMMEDIATE`, so a transaction takes the write lock
before it reads: in WAL mode a deferred transaction that reads and then writes can fail
at once with "database is locked" when another process committed in between, without
waiting for busy_timeout. Nested blocks become savepoints.

`db.utils` is the sqlite-utils view of the same connection (bulk inserts, upserts, schema
introspection). It is imported on first use: sqlite-utils imports pandas, which would add
most of a second to every CLI command that only reads a few rows.

In an encrypted box (`mlbox.store.keyring`) the file is a SQLCipher database (sqlcipher3,
AES-256 per page with an HMAC), opened with the keyring's raw key (no KDF: the key is random).
`mlbox keys rotate` rekeys it while other processes hold connections; their next statement
meets SQLITE_NOTADB, and the connection reloads the keyring, reopens and runs it again.
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
from mlbox.store import crypt

NOTADB = 26  # SQLITE_NOTADB: what SQLCipher answers when a page does not decrypt (the key changed)
ENCRYPTED_CACHE_KIB = 65536  # decrypted pages cached per connection: a hot lookup then costs ~1.1x plain (measured)

if TYPE_CHECKING:
    import sqlite_utils

Params = Sequence[Any] | dict[str, Any]


class Database:
    """A SQLite file opened the mlbox way. `db.utils` is the sqlite-utils view of the same connection."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 30000, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._lock = threading.RLock()
        self.keyring = crypt.keyring_for(self.path)
        self.conn = self._open()

    def _open(self) -> sqlite3.Connection:
        module: Any = sqlite3
        if self.keyring is not None:
            import importlib

            module = importlib.import_module("sqlcipher3.dbapi2")
        try:
            conn = self._unlocked(module) if self.keyring is not None else self._connect(module)
        except database_errors() as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        conn.row_factory = module.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: could not switch to WAL journal mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.synchronous == 'FULL' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn  # type: ignore[no-any-return]

    def _connect(self, module: Any) -> Any:
        return module.connect(str(self.path), timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)

    def _unlocked(self, module: Any) -> Any:
        """A connection under the key that opens the file: the current one, else an older one (a rotation under way).

        Each key is tried on a connection of its own: after a failed `PRAGMA key` SQLCipher keeps
        the connection read-only ("attempt to write a readonly database" on the first write).
        """
        assert self.keyring is not None
        self.keyring.refresh()
        current = self.keyring.current
        for key_id in [current, *[k for k in reversed(self.keyring.ids) if k != current]]:
            conn = self._connect(module)
            conn.execute("PRAGMA cipher_log_level = NONE")  # SQLCipher logs failed page HMACs to stderr otherwise
            conn.execute(f"PRAGMA key = {crypt.sqlcipher_key(self.keyring.key(key_id))}")
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except encrypted_errors() as exc:
                conn.close()
                if getattr(exc, "sqlite_errorcode", None) != NOTADB:
                    raise
                continue
            self.key_id = key_id
            conn.execute(f"PRAGMA cache_size = -{ENCRYPTED_CACHE_KIB}")
            return conn
        raise crypt.KeyProblem(
            f"{self.path} does not open with any key of the box's keyring (wrong key, or not an mlbox database)",
            hint="give the master key this box was encrypted with",
        )

    def rekeyed(self, exc: BaseException) -> bool:
        """True when `exc` says the file was rekeyed under this connection and it was reopened with the new key."""
        if self.keyring is None or getattr(exc, "sqlite_errorcode", None) != NOTADB or self.conn.in_transaction:
            return False
        self.keyring.reload()
        old, self.conn = self.conn, self._open()
        old.close()
        return True

    @cached_property
    def utils(self) -> sqlite_utils.Database:
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def _begin(self, statement: str) -> None:
        """Start a transaction; in an encrypted box, first prove the key still opens the file (a rotation may have rekeyed it)."""
        if self.keyring is None:
            self.conn.execute(statement)
            return
        try:  # BEGIN IMMEDIATE reads the header itself, so it can be the statement that meets the new key
            self.conn.execute(statement)
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except encrypted_errors() as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if not self.rekeyed(exc):
                raise
            self.conn.execute(statement)

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
            self._begin("BEGIN IMMEDIATE")
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
            self._begin("BEGIN DEFERRED")
            try:
                yield self
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")

    def _run(self, sql: str, params: Params) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except encrypted_errors() as exc:
            if not self.rekeyed(exc):
                raise
            return self.conn.execute(sql, params)

    def execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._run(sql, params)

    def executemany(self, sql: str, rows: Sequence[Params]) -> sqlite3.Cursor:
        with self._lock:
            return self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._run(sql, params).fetchall()]

    def one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        with self._lock:
            row = self._run(sql, params).fetchone()
        return dict(row) if row is not None else None

    def scalar(self, sql: str, params: Params = ()) -> Any:
        with self._lock:
            row = self._run(sql, params).fetchone()
        return None if row is None else row[0]

    def integrity(self) -> list[str]:
        """Problems found by SQLite's integrity and foreign-key checks; empty when healthy."""
        problems = [r[0] for r in self.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        for row in self.execute("PRAGMA foreign_key_check").fetchall():
            problems.append(f"foreign key violation in {row[0]} row {row[1]} -> {row[2]}")
        return problems


def encrypted_errors() -> tuple[type[BaseException], ...]:
    """sqlcipher3's exception classes (its own, not sqlite3's) once it is loaded; () before."""
    import sys

    module = sys.modules.get("sqlcipher3.dbapi2")
    return (module.Error,) if module is not None else ()


def operational_errors() -> tuple[type[BaseException], ...]:
    """sqlite3.OperationalError, and SQLCipher's once it is loaded (a locked or unreadable database)."""
    import sys

    module = sys.modules.get("sqlcipher3.dbapi2")
    return (sqlite3.OperationalError, *((module.OperationalError,) if module is not None else ()))


def database_errors() -> tuple[type[BaseException], ...]:
    """Every SQLite error class a Database can raise: sqlite3's, and SQLCipher's in an encrypted box."""
    return (sqlite3.Error, *encrypted_errors())
