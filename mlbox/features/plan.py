"""`features plan`: the difference between a feature file and the catalog, as a pure function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mlbox.errors import Conflict, UsageError
from mlbox.features.catalog import ViewVersion
from mlbox.features.definitions import Definitions, Entity, FeatureView

Action = Literal["create", "new-version", "update", "unchanged", "not-in-file"]


@dataclass(frozen=True)
class Change:
    kind: Literal["entity", "view"]
    name: str
    action: Action
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "detail": self.detail}


def _schema_diff(old: FeatureView, new: FeatureView) -> str:
    before = {f.name: f.dtype for f in old.fields}
    after = {f.name: f.dtype for f in new.fields}
    parts = [f"+{n}" for n in after if n not in before]
    parts += [f"-{n}" for n in before if n not in after]
    parts += [f"{n}: {before[n]}→{after[n]}" for n in after if n in before and before[n] != after[n]]
    if old.timestamp != new.timestamp:
        parts.append(f"timestamp {old.timestamp}→{new.timestamp}")
    if " ".join((old.transformation or "").split()) != " ".join((new.transformation or "").split()):
        parts.append("transformation changed")
    return ", ".join(parts) or "entity keys changed"


def _metadata_diff(old: FeatureView, new: FeatureView) -> str:
    a, b = old.as_dict(), new.as_dict()
    return ", ".join(sorted(k for k in a if a[k] != b[k]))


def plan(defs: Definitions, entities: list[Entity], latest: list[ViewVersion]) -> list[Change]:
    """What `apply` would do. Changing an existing entity's join keys is refused."""
    changes: list[Change] = []
    known = {e.name: e for e in entities}
    for e in defs.entities:
        old = known.get(e.name)
        if old is None:
            changes.append(Change("entity", e.name, "create", ", ".join(f"{k}:{t}" for k, t in e.join_keys.items())))
        elif dict(old.join_keys) != dict(e.join_keys):
            raise Conflict(
                f"entity {e.name!r} cannot change its join keys ({dict(old.join_keys)} → {dict(e.join_keys)})",
                hint="declare a new entity instead; views of the old one stay readable",
            )
        elif old.description != e.description:
            changes.append(Change("entity", e.name, "update", "description"))
        else:
            changes.append(Change("entity", e.name, "unchanged"))
    entity_of = {**known, **{e.name: e for e in defs.entities}}
    current = {v.name: v for v in latest}
    for v in defs.views:
        if v.entity not in entity_of:
            raise UsageError(f"view {v.name!r} refers to unknown entity {v.entity!r}", hint="declare the entity too")
        clash = sorted(({f.name for f in v.fields} | {v.timestamp}) & set(entity_of[v.entity].join_keys))
        if clash:
            raise UsageError(
                f"view {v.name!r} uses the join key {clash[0]!r} of entity {v.entity!r} as a field or timestamp",
                hint="join keys are added to every view automatically; remove it from the fields",
            )
        old_v = current.get(v.name)
        new_hash = v.schema_hash(entity_of[v.entity])
        if old_v is None:
            changes.append(Change("view", v.name, "create", f"version 1, {len(v.fields)} fields"))
        elif old_v.definition_hash != new_hash:
            detail = _schema_diff(old_v.view, v)
            changes.append(Change("view", v.name, "new-version", f"version {old_v.version + 1}: {detail}"))
        elif old_v.view != v:
            changes.append(Change("view", v.name, "update", f"metadata of version {old_v.version}: {_metadata_diff(old_v.view, v)}"))
        else:
            changes.append(Change("view", v.name, "unchanged", f"version {old_v.version}"))
    declared = {v.name for v in defs.views}
    for name in sorted(current):
        if name not in declared:
            changes.append(Change("view", name, "not-in-file", "kept; apply never deletes views"))
    return changes
