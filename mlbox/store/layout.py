"""The box's directory layout, and opening its metadata database the one right way."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlbox.errors import NotFound
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
    """Make the box's folders (idempotent); keys/ is private to the owner."""
    paths.home.mkdir(parents=True, exist_ok=True)
    for name in DIRECTORIES:
        (paths.home / name).mkdir(exist_ok=True)
    os.chmod(paths.keys, 0o700)


def open_meta(
    paths: BoxPaths, *, busy_timeout_ms: int, synchronous: str, reason: str = "", create: bool = False
) -> Database:
    """Open meta.db (of an existing box unless `create`) and migrate it to this mlbox's schema."""
    if create:
        create_layout(paths)
    elif not paths.exists():
        where = f" (chosen by {reason})" if reason else ""
        raise NotFound(f"no mlbox box at {paths.home}{where}", hint=f"create one with `mlbox init {paths.home}`")
    db = Database(paths.meta_db, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db
