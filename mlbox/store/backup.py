"""Consistent backups of a live box: SQLite backup API for the databases, then the immutable files.

The databases are copied first, each as one snapshot through SQLite's online backup API,
so the copy sees every catalog row at one instant; immutable files (Parquet batches,
artifacts) are copied after, so every file a copied catalog row names is already there.
Files committed after the snapshot are copied too and are swept as orphans on next open.
The copy is built under a temporary name and renamed into place at the end.

A backup of an encrypted box stays encrypted: each SQLCipher database is copied by sqlcipher3's
backup API into a new SQLCipher file under the same key (the key it opened with), and Parquet
batches and artifacts, encrypted already, are copied byte for byte with `keys/keyring.json`
(the data keys, wrapped by the master key). `keys/master.key` is left out unless asked for: a
backup usually goes to another medium, and with the master key beside it the copy would be as
readable as plaintext. Restoring needs the master key (copy it back, or set
`encryption.master_key` by reference).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlbox.errors import StoreError, UsageError
from mlbox.store import crypt
from mlbox.store.keyring import MASTER

DATABASES = ("meta.db", "online.db")
SKIP_SUFFIXES = ("-wal", "-shm", "-journal")
TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class BackupReport:
    """What a backup copied; `encrypted`: a copy of an encrypted box (`master_key`: whether keys/master.key went too)."""

    dest: Path
    databases: int
    files: int
    bytes: int
    seconds: float
    encrypted: bool = False
    master_key: bool = False


def _is_temporary(path: Path) -> bool:
    return TMP_MARK in path.name or path.name.endswith(".tmp")


def _snapshot(src: Path, dst: Path) -> None:
    """Copy one database; a SQLCipher one (encrypted box) into a SQLCipher file under the same key."""
    # 0600 whatever the umask: a restored copy must pass the box's own check (no group/world write)
    os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    if crypt.keyring_for(src) is None:
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
        target = sqlite3.connect(dst)
    else:
        import sqlcipher3.dbapi2 as sqlcipher

        from mlbox.store.sqlite import Database

        opened = Database(src)  # opens with whichever keyring key the file is under (a rotation may be under way)
        source = opened.conn
        target = sqlcipher.connect(str(dst))
        target.execute("PRAGMA cipher_log_level = NONE")
        target.execute(f"PRAGMA key = {crypt.sqlcipher_key(opened.keyring.key(opened.key_id))}")  # type: ignore[union-attr]
    try:
        source.backup(target)  # one step: a consistent snapshot under a read transaction
        problems = [r[0] for r in target.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        if problems:
            raise StoreError(f"backup of {src.name} failed its integrity check: {problems[0]}")
    finally:
        target.close()
        source.close()


def backup_box(
    home: Path, dest: Path, progress: Callable[[str, int], None] | None = None, *, include_master_key: bool = False
) -> BackupReport:
    """Copy the box at `home` to the new directory `dest`. `progress(label, nbytes)` is called per item.

    Args:
        include_master_key: also copy `keys/master.key` of an encrypted box (off: the copy is unreadable without it).
    """
    started = time.perf_counter()
    home, dest = home.resolve(), dest.resolve()
    if not (home / "meta.db").is_file():
        raise UsageError(f"{home} is not an mlbox box (no meta.db)")
    encrypted = crypt.box_encrypted(home)
    if encrypted and crypt.keyring_for(home / "meta.db") is None:
        crypt.open_box(home)  # a caller that did not open the box: keys/master.key (a clear KeyProblem without it)
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"backup destination {dest} exists and is not empty")
    if dest == home or home in dest.parents:
        raise UsageError(f"backup destination {dest} is inside the box; choose a folder outside it")
    tmp = dest.parent / f"{dest.name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, mode=0o700)
    os.chmod(tmp, 0o700)  # mkdir's mode is filtered by the umask
    databases = files = nbytes = 0
    try:
        for name in DATABASES:
            if (home / name).is_file():
                _snapshot(home / name, tmp / name)
                size = (tmp / name).stat().st_size
                databases, nbytes = databases + 1, nbytes + size
                if progress:
                    progress(name, size)
        for root, dirnames, filenames in os.walk(home):
            rel = Path(root).relative_to(home)
            dirnames[:] = sorted(d for d in dirnames if not _is_temporary(Path(d)))
            (tmp / rel).mkdir(exist_ok=True)
            os.chmod(tmp / rel, os.stat(root).st_mode & 0o777)  # keys/ stays 0700
            for filename in sorted(filenames):
                if (rel == Path(".") and filename.startswith(DATABASES)) or filename.endswith(SKIP_SUFFIXES):
                    continue
                if encrypted and rel == Path("keys") and filename == MASTER and not include_master_key:
                    continue
                src = Path(root) / filename
                if _is_temporary(src) or not src.is_file():
                    continue
                try:
                    shutil.copy2(src, tmp / rel / filename)
                except FileNotFoundError:  # removed while we walked (retention, sweep)
                    continue
                size = src.stat().st_size if src.exists() else 0
                files, nbytes = files + 1, nbytes + size
                if progress:
                    progress(str(rel / filename), size)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BackupReport(
        dest, databases, files, nbytes, time.perf_counter() - started,
        encrypted=encrypted, master_key=encrypted and include_master_key and (home / "keys" / MASTER).is_file(),
    )  # fmt: skip
