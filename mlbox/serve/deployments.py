"""Deployments as rows in meta.db: primary, canary (weight), sticky key, shadow; promote and roll back.

Every change bumps the row's `revision` and is audited; running servers poll revisions and
swap in the new split without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlbox import clock
from mlbox.errors import Conflict, NotFound, UsageError, ValidationError
from mlbox.registry.store import ModelVersion, Registry
from mlbox.serve.router import TrafficSplit
from mlbox.store.audit import AuditLog
from mlbox.store.sqlite import Database
from mlbox.types import check_name


@dataclass(frozen=True)
class Deployment:
    """One deployment row: which models serve it, the canary's weight, the sticky key, and its revision."""

    name: str
    primary_model: str
    canary_model: str | None
    canary_weight: float
    sticky_key: str | None
    shadow_model: str | None
    previous_primary: str | None
    revision: int
    created_at: str
    created_by: str
    updated_at: str
    updated_by: str

    def split(self) -> TrafficSplit:
        return TrafficSplit(
            self.name, self.primary_model, self.canary_model, self.canary_weight, self.sticky_key, self.shadow_model, self.revision
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Deployments:
    """The deployments of a box: reads, and every audited change (create, canary, sticky key, shadow, promote, rollback)."""

    def __init__(self, db: Database, registry: Registry, audit: AuditLog) -> None:
        self.db = db
        self.registry = registry
        self.audit = audit

    def get(self, name: str) -> Deployment:
        row = self.db.one("SELECT * FROM deployments WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no deployment {name!r}", hint="`mlbox deploy status` lists deployments")
        return Deployment(**row)

    def all(self) -> list[Deployment]:
        return [Deployment(**r) for r in self.db.query("SELECT * FROM deployments ORDER BY name")]

    def revisions(self) -> dict[str, int]:
        return {r["name"]: r["revision"] for r in self.db.query("SELECT name, revision FROM deployments")}

    def _servable(self, ref: str, like: ModelVersion | None = None) -> ModelVersion:
        version = self.registry.get(ref)
        if "model.onnx" not in version.artifacts:
            raise ValidationError(f"{version.ref} has no ONNX export; register it with `mlbox train --register`")
        if version.archived_at:
            raise Conflict(f"{version.ref} is archived")
        if like is not None:
            ours = [(c["name"], c["kind"]) for c in version.signature["columns"]]
            theirs = [(c["name"], c["kind"]) for c in like.signature["columns"]]
            if ours != theirs or version.task != like.task:
                raise ValidationError(
                    f"{version.ref} takes different inputs than the primary {like.ref}",
                    hint="a canary or shadow must accept the same request rows as the primary",
                )
        return version

    def _write(self, name: str, actor: str, action: str, details: dict[str, Any], **values: Any) -> Deployment:
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(
            f"UPDATE deployments SET {sets}, revision = revision + 1, updated_at = ?, updated_by = ? WHERE name = ?",
            [*values.values(), clock.iso(), actor, name],
        )
        self.audit.record(actor, f"deploy.{action}", name, details)
        return self.get(name)

    def create(self, name: str, model: str, actor: str, sticky_key: str | None = None) -> Deployment:
        """A deployment serving `model`; `sticky_key` names the request field that identifies each row's entity."""
        check_name(name, "deployment name")
        if sticky_key is not None:
            check_name(sticky_key, "sticky key")
        version = self._servable(model)
        with self.db.atomic():
            if self.db.one("SELECT 1 FROM deployments WHERE name = ?", (name,)):
                raise Conflict(f"deployment {name!r} already exists", hint="use `mlbox deploy canary` to roll out a new model")
            now = clock.iso()
            self.db.execute(
                "INSERT INTO deployments (name, primary_model, sticky_key, revision, created_at, created_by, updated_at, "
                "updated_by) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                (name, version.ref, sticky_key, now, actor, now, actor),
            )
            self.audit.record(actor, "deploy.create", name, {"primary": version.ref, "sticky_key": sticky_key})
        return self.get(name)

    def canary(self, name: str, model: str, weight: float, actor: str, sticky_key: str | None = None) -> Deployment:
        """`weight` percent of requests to `model`; `sticky_key` sets the deployment's sticky key (None keeps it)."""
        if not 0 <= weight <= 100:
            raise UsageError(f"canary weight must be between 0 and 100 (percent), got {weight}")
        if sticky_key is not None:
            check_name(sticky_key, "sticky key")
        with self.db.atomic():
            current = self.get(name)
            version = self._servable(model, self.registry.get(current.primary_model))
            if version.ref == current.primary_model:
                raise UsageError(f"{version.ref} is already the primary of {name!r}")
            key = current.sticky_key if sticky_key is None else sticky_key
            return self._write(
                name, actor, "canary", {"model": version.ref, "weight": weight, "sticky_key": key},
                canary_model=version.ref, canary_weight=float(weight), sticky_key=key,
            )  # fmt: skip

    def sticky(self, name: str, key: str | None, actor: str) -> Deployment:
        """Set (or, with None, remove) the request field that pins each entity to one variant and names it in the log."""
        if key is not None:
            check_name(key, "sticky key")
        with self.db.atomic():
            self.get(name)
            return self._write(name, actor, "sticky", {"sticky_key": key}, sticky_key=key)

    def shadow(self, name: str, model: str | None, actor: str) -> Deployment:
        with self.db.atomic():
            current = self.get(name)
            ref = None if model is None else self._servable(model, self.registry.get(current.primary_model)).ref
            return self._write(name, actor, "shadow", {"model": ref}, shadow_model=ref)

    def promote(self, name: str, actor: str) -> Deployment:
        with self.db.atomic():
            current = self.get(name)
            if not current.canary_model:
                raise Conflict(f"deployment {name!r} has no canary to promote")
            return self._write(
                name, actor, "promote", {"primary": current.canary_model, "previous": current.primary_model},
                primary_model=current.canary_model, previous_primary=current.primary_model,
                canary_model=None, canary_weight=0.0,
            )  # fmt: skip

    def rollback(self, name: str, actor: str) -> Deployment:
        """Canary to weight 0 if it gets traffic; otherwise the previous primary back."""
        with self.db.atomic():
            current = self.get(name)
            if current.canary_model and current.canary_weight > 0:
                return self._write(
                    name, actor, "rollback", {"canary": current.canary_model, "weight": 0}, canary_weight=0.0
                )
            if current.previous_primary:
                return self._write(
                    name, actor, "rollback", {"primary": current.previous_primary, "replaced": current.primary_model},
                    primary_model=current.previous_primary, previous_primary=current.primary_model,
                )  # fmt: skip
            raise Conflict(f"deployment {name!r} has nothing to roll back (no canary traffic, no previous primary)")
