"""The box's directory layout, its private file modes, and opening its metadata database the one right way."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mlbox.errors import NotFound, StoreError
from mlbox.store import keyring
from mlbox.store.migrations import migrate
from mlbox.store.sqlite import Database

DIRECTORIES = ("features", "predictions", "artifacts", "bentoml", "keys", "logs")


@dataclass(frozen=True)
class BoxPaths:
    """Where everything of one box lives (see ARCHITECTURE.md)."""

    home: Path

    @property
    def config(self) -> Path:
        return self.home / "mlbox.toml"

    @property
    def meta_db(self) -> Path:
        return self.home / "meta.db"

    @property
    def online_db(self) -> Path:
        return self.home / "online.db"

    @property
    def features(self) -> Path:
        return self.home / "features"

    @property
    def predictions(self) -> Path:
        return self.home / "predictions"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def bentoml(self) -> Path:
        return self.home / "bentoml"

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def audit_key(self) -> Path:
        return self.keys / "audit.key"

    def exists(self) -> bool:
        return self.meta_db.is_file()


def create_layout(paths: BoxPaths) -> None:
    """Make the box's folders and empty databases, private to the owner (idempotent).

    A new box's home is made 0700 and its databases are created 0600 before SQLite opens
    them (SQLite gives its -wal/-shm files the database's mode), so the umask never decides
    who can read or change the box. An existing box keeps the modes its owner chose.
    """
    new = not paths.exists()
    paths.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in DIRECTORIES:
        (paths.home / name).mkdir(mode=0o700, exist_ok=True)
    os.chmod(paths.keys, 0o700)
    if new:
        os.chmod(paths.home, 0o700)
        if paths.config.is_file():
            os.chmod(paths.config, 0o600)
    for db in (paths.meta_db, paths.online_db):
        _create_private(db)


def _create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (an empty file is an empty SQLite database)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def private_files(paths: BoxPaths) -> list[Path]:
    """The box's folders and files that must not be writable by anyone but the owner (settings, databases, keys)."""
    dbs = [paths.home / f"{db.name}{suffix}" for db in (paths.meta_db, paths.online_db) for suffix in ("", "-wal", "-shm")]
    keys = sorted(paths.keys.iterdir()) if paths.keys.is_dir() else []
    return [paths.home, paths.keys, paths.config, *dbs, *keys]


def check_private(paths: BoxPaths) -> None:
    """Refuse a box whose home, keys or databases can be changed by other OS users.

    Whoever can write meta.db or the audit key can make themselves admin or rewrite the
    audit chain, so such a box is not opened at all. Being readable by others is allowed
    (a deliberate read-only share): it gives them every value in the box, not its control.
    """
    for path in private_files(paths):
        try:
            mode = path.stat().st_mode  # a symlink is judged by what it points to
        except FileNotFoundError:
            continue
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            fix = "700" if stat.S_ISDIR(mode) else "600"
            raise StoreError(
                f"{path} is writable by other OS users (mode {stat.S_IMODE(mode):04o}); mlbox refuses to open this box",
                hint=f"run `chmod {fix} {path}`",
            )


def open_meta(
    paths: BoxPaths,
    *,
    busy_timeout_ms: int,
    synchronous: str,
    reason: str = "",
    create: bool = False,
    encrypt: bool = False,
    master_key: str = "",
) -> Database:
    """Open meta.db (of an existing box unless `create`) and migrate it to this mlbox's schema.

    An encrypted box's keyring is loaded and registered first (`master_key`: the resolved
    `encryption.master_key` setting; empty: keys/master.key), so meta.db, online.db and every
    file opened afterwards are read with its keys. `encrypt` makes a new box encrypted: the
    keyring exists before any database has a page.
    """
    if create:
        if encrypt and paths.exists() and not keyring.encrypted_box(paths.home) and paths.meta_db.stat().st_size:
            raise StoreError(f"{paths.home} is an existing plain box", hint="convert it with `mlbox keys encrypt-box`")
        create_layout(paths)
        if encrypt and not keyring.encrypted_box(paths.home):
            keyring.create_keyring(paths.home, master_key)
    elif not paths.exists():
        where = f" (chosen by {reason})" if reason else ""
        raise NotFound(f"no mlbox box at {paths.home}{where}", hint=f"create one with `mlbox init {paths.home}`")
    check_private(paths)
    keyring.open_box(paths.home, master_key)
    db = Database(paths.meta_db, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db
