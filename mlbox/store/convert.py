"""`mlbox keys encrypt-box`: turn a plain box into an encrypted one in place, refused while any process uses it.

The databases are converted first, under a keyring staged in `keys/.encrypt-box/`: each is
exported by SQLCipher (`sqlcipher_export`) into `.<name>.sqlcipher` beside it and fsynced.
Moving the staged keyring to `keys/keyring.json` is the commit point; the two renames of the
exports over meta.db and online.db follow at once (`recover` completes them if a kill fell in
between, before anything opens the box). Killed before the commit, the box is still plain and
the next run starts again. Then every Parquet batch and every artifact is encrypted, one
atomic rewrite per file; readers decrypt per file, so a box killed mid-way reads as a whole
and the next run encrypts what is left.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlbox.config import Settings
from mlbox.errors import Conflict, UsageError
from mlbox.store import crypt, keyring
from mlbox.store.artifacts import ArtifactStore
from mlbox.store.audit import AuditLog
from mlbox.store.layout import BoxPaths, open_meta
from mlbox.store.boxfiles import BoxFile, box_files, exclusive, file_key_id, reseal_blob, rewrite_parquet, sweep_rekey_leftovers
from mlbox.store.durable import fsync_path
from mlbox.store.rotate import Progress

STAGING = ".encrypt-box"
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class Conversion:
    """What `encrypt_box` did: the new key, databases converted, files encrypted, artifacts left plain (they fail checks)."""

    key: str
    databases: list[str] = field(default_factory=list)
    files: int = 0
    unverified: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "databases": self.databases, "files": self.files, "unverified": self.unverified,
                "seconds": round(self.seconds, 3)}  # fmt: skip


def _export(paths: BoxPaths, name: str) -> Path:
    return paths.home / f".{name}.sqlcipher"


def is_plain_sqlite(path: Path) -> bool:
    """A plain SQLite database (its header is readable text); an empty file counts, SQLCipher pages do not."""
    with path.open("rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    return head in (SQLITE_MAGIC, b"")


def users_of(paths: BoxPaths) -> list[str]:
    """Other processes of this machine holding the box's databases open (servers, workers, sidecars, CLI commands).

    Every mlbox process that uses a box keeps meta.db open (and its -wal/-shm), so the open
    files of each process the OS lets us see are the box's lock list. Processes of other OS
    users are invisible here, but they cannot be using a box that is private to its owner.
    """
    import psutil

    watched = {os.path.realpath(paths.home / f"{db.name}{s}") for db in (paths.meta_db, paths.online_db) for s in ("", "-wal", "-shm")}
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if any(os.path.realpath(f.path) in watched for f in proc.open_files()):
                cmd = " ".join((proc.info["cmdline"] or [proc.info["name"] or "?"])[:4])
                found.append(f"pid {proc.pid} ({'this process: close its Box first' if proc.pid == os.getpid() else cmd})")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _running_jobs(paths: BoxPaths) -> list[str]:
    """Jobs a worker holds a live lease on (a worker on this box that our process scan could not see)."""
    conn = sqlite3.connect(f"file:{paths.meta_db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, worker FROM jobs WHERE status = 'running' AND lease_until > ?", (time.time(),)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [f"job {r[0]} (worker {r[1]})" for r in rows]


def refuse_if_in_use(paths: BoxPaths) -> None:
    users = users_of(paths) + (_running_jobs(paths) if is_plain_sqlite(paths.meta_db) else [])
    if users:
        raise Conflict(
            f"{paths.home} is in use by {len(users)} process(es): {'; '.join(users[:5])}",
            hint="stop `mlbox serve`, `mlbox worker` and other mlbox commands on this box, then run `mlbox keys encrypt-box` again",
        )


def recover(paths: BoxPaths) -> list[str]:
    """Finish a conversion killed after its commit point: move the complete exports over the plain databases."""
    moved: list[str] = []
    if not crypt.box_encrypted(paths.home):
        return moved
    for db in (paths.meta_db, paths.online_db):
        export = _export(paths, db.name)
        if export.is_file() and db.is_file() and is_plain_sqlite(db):
            _replace_database(export, db)
            moved.append(db.name)
    return moved


def _replace_database(export: Path, db: Path) -> None:
    for suffix in ("-wal", "-shm"):  # the plain database was checkpointed and closed: these hold nothing
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    os.replace(export, db)
    _fsync_dir(db.parent)


_fsync_dir = fsync_path


def export_encrypted(plain: Path, dest: Path, key: bytes) -> None:
    """Copy a plain SQLite database into a new SQLCipher file keyed with `key` (WAL mode), fsynced."""
    import sqlcipher3.dbapi2 as sqlcipher

    dest.unlink(missing_ok=True)
    conn = sqlcipher.connect(str(plain), isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute(f"ATTACH DATABASE ? AS enc KEY {crypt.sqlcipher_key(key)}", (str(dest),))
        conn.execute("SELECT sqlcipher_export('enc')")
        version = conn.execute("PRAGMA main.user_version").fetchone()[0]
        conn.execute(f"PRAGMA enc.user_version = {int(version)}")
        conn.execute("DETACH DATABASE enc")
    finally:
        conn.close()
    out = sqlcipher.connect(str(dest), isolation_level=None)
    try:
        out.execute(f"PRAGMA key = {crypt.sqlcipher_key(key)}")
        out.execute("PRAGMA journal_mode = WAL")
    finally:
        out.close()
    os.chmod(dest, 0o600)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _convert_databases(paths: BoxPaths, master_key: str) -> tuple[str, list[str]]:
    """Stage a keyring, export both databases under its key, commit the keyring, swap the databases in."""
    staging = paths.keys / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # a run killed before its commit point
    staged = keyring.create_keyring(staging, master_key)
    keyring.unregister(staging)
    key_id, key = staged.current_key()
    converted = []
    for db in (paths.meta_db, paths.online_db):
        if db.is_file():
            export_encrypted(db, _export(paths, db.name), key)
            converted.append(db.name)
    staged_master = staging / "keys" / keyring.MASTER
    if staged_master.is_file() and not (paths.keys / keyring.MASTER).exists():
        os.replace(staged_master, paths.keys / keyring.MASTER)
    os.replace(staging / "keys" / keyring.KEYRING, paths.keys / keyring.KEYRING)  # the commit point
    _fsync_dir(paths.keys)
    recover(paths)
    shutil.rmtree(staging, ignore_errors=True)
    return key_id, converted


def encrypt_box(settings: Settings, actor: str, *, progress: Progress | None = None) -> Conversion:
    """Encrypt a plain box in place (or finish an interrupted conversion); audited as `keys.encrypt_box`.

    Args:
        settings: the box's settings (home, busy timeout, `encryption.master_key`).
        actor: the admin, for the audit entry.
        progress: called with (phase, done, total) as files are encrypted.
    """
    started = time.monotonic()
    paths = BoxPaths(settings.home)
    master = str(settings["encryption.master_key"] or "")
    if not paths.exists():
        raise UsageError(f"no mlbox box at {paths.home}")
    with exclusive(paths, "`mlbox keys encrypt-box`"):
        recover(paths)
        if crypt.box_encrypted(paths.home) and crypt.open_box(paths.home, master) and not _plain_files(paths):
            raise UsageError(
                f"{paths.home} is already encrypted", hint="`mlbox keys status` shows its keys; `mlbox keys rotate` changes them"
            )
        refuse_if_in_use(paths)
        return _encrypt(settings, paths, master, actor, progress, started)


def _plain_files(paths: BoxPaths) -> list[BoxFile]:
    return [f for f in box_files(paths) if file_key_id(f) is None]


def _encrypt(settings: Settings, paths: BoxPaths, master: str, actor: str, progress: Progress | None, started: float) -> Conversion:
    sweep_rekey_leftovers(paths)
    databases: list[str] = []
    if not crypt.box_encrypted(paths.home):
        _, databases = _convert_databases(paths, master)
    ring = crypt.open_box(paths.home, master)
    assert ring is not None
    meta = open_meta(paths, busy_timeout_ms=int(settings["store.busy_timeout_ms"]), synchronous=settings["store.synchronous"],
                     master_key=master)  # fmt: skip
    try:
        result = Conversion(key=ring.current, databases=databases)
        todo = _plain_files(paths)
        store = ArtifactStore(paths.artifacts, sweep=False)
        for i, item in enumerate(todo, 1):
            if item.kind == "parquet":
                rewrite_parquet(item.path)
                result.files += 1
            elif item.kind == "sealed":
                reseal_blob(item.path)
                result.files += 1
            elif store.reseal({item.path.name}):
                result.files += 1
            else:
                result.unverified.append(item.path.name)
            if progress is not None:
                progress("encrypting files", i, len(todo))
        result.seconds = time.monotonic() - started
        AuditLog.beside(meta).record(actor, "keys.encrypt_box", str(paths.home), result.as_dict())
        return result
    finally:
        meta.close()
