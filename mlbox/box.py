"""The Box: builds every service of one box from its Settings. Wiring only, no logic."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mlbox.config import Settings, load_settings
from mlbox.security import osuser
from mlbox.security.identity import Identity
from mlbox.store.audit import AuditLog, load_or_create_key
from mlbox.store.layout import BoxPaths, open_meta

if TYPE_CHECKING:
    from mlbox.features.store import FeatureStore
    from mlbox.jobs.queue import JobQueue
    from mlbox.monitor.service import Monitor
    from mlbox.registry.store import Registry
    from mlbox.serve.deployments import Deployments
    from mlbox.store.artifacts import ArtifactStore
    from mlbox.tracking.run import ActiveRun
    from mlbox.tracking.store import TrackingStore


class Box:
    """One box: its paths, metadata database, audit log and services."""

    def __init__(
        self, settings: Settings, *, create: bool = False, actor: str | None = None, encrypt: bool = False
    ) -> None:
        self.settings = settings
        self.actor = actor or osuser.effective_os_user()
        self.paths = BoxPaths(settings.home)
        self.db = open_meta(
            self.paths,
            busy_timeout_ms=settings["store.busy_timeout_ms"],
            synchronous=settings["store.synchronous"],
            reason=settings.home_reason,
            create=create,
            encrypt=encrypt,
            master_key=settings["encryption.master_key"],
        )
        self.audit = AuditLog(self.db, load_or_create_key(self.paths.audit_key))
        self.identity = Identity(self.db, self.audit, settings["auth.token_ttl_days"])

    @classmethod
    def create(cls, settings: Settings, admin_os_user: str, *, encrypt: bool = False) -> Box:
        """Create (or reopen) the box at settings.home; the first OS user to create it becomes admin."""
        box = cls(settings, create=True, encrypt=encrypt)
        box.identity.bootstrap_admin(admin_os_user)
        return box

    @classmethod
    def init_project(cls, dest: Path, template: str, admin_os_user: str, *, encrypt: bool = False) -> tuple[Box, list[str]]:
        """`mlbox init` and `mlbox.init`: copy `template` into `dest`, create its box, audit it; (open box, files)."""
        from mlbox.project import init_project

        files = init_project(dest, template)
        box = cls.create(load_settings(dest), admin_os_user, encrypt=encrypt)
        try:
            admin = next(u.name for u in box.identity.users() if u.role == "admin")
            box.audit.record(admin, "box.init", str(dest), {"template": template, "files": len(files), "encrypted": encrypt})
        except BaseException:
            box.close()
            raise
        return box, files

    @cached_property
    def features(self) -> FeatureStore:
        from mlbox.features.store import FeatureStore

        return FeatureStore(self.db, self.audit, self.paths, self.settings, self.actor)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        from mlbox.store.artifacts import ArtifactStore

        return ArtifactStore(self.paths.artifacts)

    @cached_property
    def tracking(self) -> TrackingStore:
        from mlbox.tracking.store import TrackingStore

        return TrackingStore(self.db, self.artifacts, self.audit)

    @cached_property
    def registry(self) -> Registry:
        from mlbox.registry.store import Registry

        return Registry(self.db, self.artifacts, self.audit)

    @cached_property
    def deployments(self) -> Deployments:
        from mlbox.serve.deployments import Deployments

        return Deployments(self.db, self.registry, self.audit)

    @cached_property
    def jobs(self) -> JobQueue:
        from mlbox.jobs.queue import JobQueue

        return JobQueue(self.db, self.audit)

    @cached_property
    def monitor(self) -> Monitor:
        from mlbox.monitor.service import Monitor

        return Monitor(self.db, self.paths.home, self.registry, self.audit)

    def start_run(self, experiment: str, name: str | None = None, **fields: Any) -> ActiveRun:
        """Start a tracked run: `with box.start_run("churn") as run: run.log_metric("loss", v, step=i)`."""
        from mlbox.tracking.environment import code_revision, environment
        from mlbox.tracking.run import ActiveRun

        env, env_hash = environment()
        rev, dirty = code_revision(self.paths.home)
        fields = {"environment": env, "env_hash": env_hash, "code_rev": rev, "code_dirty": dirty, **fields}
        return ActiveRun(self.tracking, self.tracking.create_run(experiment, name, self.actor, **fields))

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
