"""The Box: builds every service of one box from its Settings. Wiring only, no logic."""

from __future__ import annotations

import getpass
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING

from mlbox.config import Settings
from mlbox.security.identity import Identity
from mlbox.store.audit import AuditLog, load_or_create_key
from mlbox.store.layout import BoxPaths, open_meta

if TYPE_CHECKING:
    from mlbox.features.store import FeatureStore


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Box:
    """One box: its paths, metadata database, audit log and services."""

    def __init__(self, settings: Settings, *, create: bool = False, actor: str | None = None) -> None:
        self.settings = settings
        self.actor = actor or _os_user()
        self.paths = BoxPaths(settings.home)
        self.db = open_meta(
            self.paths,
            busy_timeout_ms=settings["store.busy_timeout_ms"],
            synchronous=settings["store.synchronous"],
            reason=settings.home_reason,
            create=create,
        )
        self.audit = AuditLog(self.db, load_or_create_key(self.paths.audit_key))
        self.identity = Identity(self.db, self.audit, settings["auth.token_ttl_days"])

    @classmethod
    def create(cls, settings: Settings, admin_os_user: str) -> Box:
        """Create (or reopen) the box at settings.home; the first OS user to create it becomes admin."""
        box = cls(settings, create=True)
        box.identity.bootstrap_admin(admin_os_user)
        return box

    @cached_property
    def features(self) -> FeatureStore:
        from mlbox.features.store import FeatureStore

        return FeatureStore(self.db, self.audit, self.paths, self.settings, self.actor)

    def close(self) -> None:
        if "features" in self.__dict__:
            self.features.close()
        self.db.close()

    def __enter__(self) -> Box:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
