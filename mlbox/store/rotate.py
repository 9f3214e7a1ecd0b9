"""Key rotation of an encrypted box: a new data key, every file and both databases re-encrypted under it, the old key retired.

Every encrypted file names the key it was written under (Parquet: the footer's key material;
artifacts: the envelope), and meta.db/online.db open with any key of the keyring, so a box in
the middle of a rotation reads as a whole. That makes the rotation stateless and crash-safe:
the keyring on disk says where it stands. A keyring holding more than its current key is a
rotation not yet finished, and `rotate` finishes it instead of starting another; a kill -9
at any point leaves old and new keys both in the keyring, each file whole (temp name, fsync,
rename) and each database under one key (`PRAGMA rekey` is one SQLite transaction).

Order matters for running servers. The databases are rekeyed first: every process that
touches one next meets SQLITE_NOTADB, reloads the keyring (`store/sqlite.Database`) and from
then on writes new files under the new key. The files are rewritten after that, and scanned
again until a scan finds none under an old key; only then is the old key retired. Readers that
opened a file before it was replaced keep reading the old inode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlbox.config import Settings
from mlbox.errors import StoreError, UsageError
from mlbox.store import crypt
from mlbox.store.audit import AuditLog
from mlbox.store.boxfiles import box_files, encrypted_files, exclusive, file_key_id, rewrite, sweep_rekey_leftovers
from mlbox.store.layout import BoxPaths, open_meta
from mlbox.store.sqlite import Database, encrypted_errors

Progress = Callable[[str, int, int], None]  # (phase, done, total): the CLI draws it with rich
SETTLE_S = 1.0  # how long a scan must stay clean before the old key is retired (a writer mid-file finishes)
MAX_PASSES = 20


@dataclass
class Rotation:
    """What `rotate` did: the keys before and after, files rewritten, databases rekeyed, keys retired."""

    previous: list[str]
    current: str
    files: int = 0
    databases: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    resumed: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "previous": self.previous, "current": self.current, "files": self.files, "databases": self.databases,
            "retired": self.retired, "resumed": self.resumed, "seconds": round(self.seconds, 3),
        }  # fmt: skip


# databases ----------------------------------------------------------------------------


def keyed_connection(path: Path, key: bytes, busy_timeout_ms: int) -> Any:
    """A raw SQLCipher connection keyed once. (After a failed `PRAGMA key` a connection stays read-only,
    so each key is tried on a connection of its own.)"""
    import sqlcipher3.dbapi2 as sqlcipher

    conn = sqlcipher.connect(str(path), timeout=busy_timeout_ms / 1000, isolation_level=None)
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f"PRAGMA key = {crypt.sqlcipher_key(key)}")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return conn


def database_key_id(path: Path, keyring: crypt.Keyring, busy_timeout_ms: int) -> str | None:
    """The keyring key a SQLCipher database opens with (None: no such file, or no key opens it)."""
    if not path.is_file():
        return None
    for key_id in [keyring.current, *[k for k in keyring.ids if k != keyring.current]]:
        conn = keyed_connection(path, keyring.key(key_id), busy_timeout_ms)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return key_id
        except encrypted_errors():
            continue
        finally:
            conn.close()
    return None


def rekey_database(path: Path, keyring: crypt.Keyring, busy_timeout_ms: int) -> bool:
    """Re-encrypt a SQLCipher database under the keyring's current key in one transaction; False when it already is.

    SQLCipher rewrites every page inside one write transaction (WAL: the frames commit at once),
    so a kill leaves the database under the old key or the new one, both in the keyring.
    """
    found = database_key_id(path, keyring, busy_timeout_ms)
    if found is None and path.is_file():
        raise StoreError(f"{path} opens with no key of the keyring", hint="give the master key this box was encrypted with")
    if found is None or found == keyring.current:
        return False
    conn = keyed_connection(path, keyring.key(found), busy_timeout_ms)
    try:
        deadline = time.monotonic() + busy_timeout_ms / 1000
        while True:
            try:
                conn.execute(f"PRAGMA rekey = {crypt.sqlcipher_key(keyring.current_key()[1])}")
                break
            except encrypted_errors() as exc:  # another writer holds the lock past SQLCipher's own wait
                busy = "locked" in str(exc).lower() or "busy" in str(exc).lower()
                if not busy or time.monotonic() > deadline:
                    raise StoreError(f"cannot rekey {path}: {exc}") from None
                time.sleep(0.05)
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # old-key pages leave the main file as soon as readers allow
        return True
    finally:
        conn.close()


# rotation -----------------------------------------------------------------------------


def keyring_of(settings: Settings) -> crypt.Keyring:
    """The loaded keyring of the box at `settings.home`; refuses a plain box."""
    keyring = crypt.open_box(settings.home, str(settings["encryption.master_key"] or ""))
    if keyring is None:
        raise UsageError(f"{settings.home} is not an encrypted box", hint="encrypt it first with `mlbox keys encrypt-box`")
    return keyring


def rotate(settings: Settings, actor: str, *, progress: Progress | None = None, settle_s: float = SETTLE_S) -> Rotation:
    """Rotate the box's data key without stopping its servers; finishes an interrupted rotation instead of starting one.

    Args:
        settings: the box's settings (home, busy timeout, `encryption.master_key`).
        actor: the box user, for the `keys.rotate` audit entry.
        progress: called with (phase, done, total) as files are rewritten.
        settle_s: seconds a scan must find no file under an old key before that key is retired.
    """
    paths = BoxPaths(settings.home)
    with exclusive(paths, "`mlbox keys rotate`"):
        return _rotate(settings, actor, progress, settle_s)


def _rotate(settings: Settings, actor: str, progress: Progress | None, settle_s: float) -> Rotation:
    started = time.monotonic()
    paths = BoxPaths(settings.home)
    busy = int(settings["store.busy_timeout_ms"])
    _meta(settings).close()  # refuses a box that is not one, or is open to others; loads and registers the keyring
    keyring = keyring_of(settings)
    keyring.reload()
    previous = keyring.ids
    resumed = len(previous) > 1
    if not resumed:
        keyring.add_key()
    result = Rotation(previous=previous, current=keyring.current, resumed=resumed)
    sweep_rekey_leftovers(paths)
    for db_path in (paths.meta_db, paths.online_db):
        if rekey_database(db_path, keyring, busy):
            result.databases.append(db_path.name)
    result.files = _reencrypt_until_clean(paths, keyring, progress, settle_s)
    stale = [p.name for p in (paths.meta_db, paths.online_db) if database_key_id(p, keyring, busy) not in (None, keyring.current)]
    if stale:
        raise StoreError(f"{', '.join(stale)} still open(s) with an old key after the rekey", hint="run `mlbox keys rotate` again")
    result.retired = [k for k in keyring.ids if k != keyring.current]
    keyring.retire(result.retired)
    result.seconds = time.monotonic() - started
    meta = _meta(settings)  # a connection opened after the rekey, under the current key
    try:
        AuditLog.beside(meta).record(actor, "keys.rotate", str(paths.home), result.as_dict())
    finally:
        meta.close()
    return result


def _meta(settings: Settings) -> Database:
    return open_meta(BoxPaths(settings.home), busy_timeout_ms=int(settings["store.busy_timeout_ms"]),
                     synchronous=settings["store.synchronous"], master_key=str(settings["encryption.master_key"] or ""))  # fmt: skip


def _reencrypt_until_clean(paths: BoxPaths, keyring: crypt.Keyring, progress: Progress | None, settle_s: float) -> int:
    """Rewrite every file not under the current key, rescanning until a scan `settle_s` after the last rewrite finds none.

    A server that wrote a file under the old key before it saw the rekeyed databases is caught
    by a later scan. A file that cannot be rewritten (an artifact failing its checks) keeps the
    old key in use: the rotation stops before retiring it, naming the file.
    """
    rewritten = 0
    clean_since: float | None = None
    for _ in range(MAX_PASSES):
        todo = [f for f in encrypted_files(paths) if file_key_id(f) != keyring.current]
        if not todo:
            clean_since = clean_since or time.monotonic()
            if time.monotonic() - clean_since >= settle_s:
                return rewritten
            time.sleep(min(0.25, settle_s))
            continue
        clean_since = None
        for i, item in enumerate(todo, 1):
            if not item.path.exists():  # removed meanwhile (a purge or an erasure rewrote it)
                continue
            if not rewrite(paths, item):
                raise StoreError(
                    f"{item.path} does not verify, so it cannot be re-encrypted; the old key is kept",
                    hint="`mlbox doctor` explains the file; restore it from a backup, then run `mlbox keys rotate` again",
                )
            rewritten += 1
            if progress is not None:
                progress("re-encrypting files", i, len(todo))
    raise StoreError("files under an old key kept appearing; the old key is kept", hint="run `mlbox keys rotate` again")


def status(settings: Settings) -> dict[str, Any]:
    """Where the box's encryption stands: its keys, files per key (or plaintext), the key of each database."""
    paths = BoxPaths(settings.home)
    if not crypt.box_encrypted(paths.home):
        plain = sum(1 for _ in box_files(paths))
        return {"encrypted": False, "current": None, "keys": [], "files": {"plaintext": plain}, "databases": {}}
    keyring = keyring_of(settings)
    keyring.reload()
    counts: dict[str, int] = {}
    for item in encrypted_files(paths):
        key = file_key_id(item) or "plaintext"
        counts[key] = counts.get(key, 0) + 1
    plain = sum(1 for f in box_files(paths) if file_key_id(f) is None)  # an unfinished `encrypt-box`
    if plain:
        counts["plaintext"] = plain
    busy = int(settings["store.busy_timeout_ms"])
    databases = {p.name: database_key_id(p, keyring, busy) for p in (paths.meta_db, paths.online_db) if p.is_file()}
    master = "setting encryption.master_key" if settings["encryption.master_key"] else str(paths.keys / "master.key")
    return {
        "encrypted": True, "master_key": master, "current": keyring.current, "keys": keyring.ids, "files": counts,
        "databases": databases, "rotation_unfinished": len(keyring.ids) > 1,
    }  # fmt: skip
