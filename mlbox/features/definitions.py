"""Feature definitions: entities, fields and feature views, parsed, validated and hashed.

Pure values. A view's *schema hash* covers what shapes its stored data (entity keys and
their types, timestamp column, field names and dtypes, transformation); a change to it
makes a new version (`customers@2`). Everything else (description, owner, tags,
classification, TTL, source, and the records-of-processing keys `retention`, `purpose` and
`legal_basis`) is metadata, updated in place on the current version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlbox.errors import UsageError, ValidationError
from mlbox.types import check_keys, check_name, parse_duration, printable, read_text_file

# mlbox dtype -> DuckDB type
DTYPES: dict[str, str] = {
    "int64": "BIGINT",
    "int32": "INTEGER",
    "float64": "DOUBLE",
    "float32": "FLOAT",
    "string": "VARCHAR",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMP WITH TIME ZONE",
    "date": "DATE",
}
KEY_DTYPES = ("int64", "int32", "string")
CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
# GDPR Art. 6(1) (a)-(f); the UAE PDPL's Art. 4 cases of processing without consent map onto them
LEGAL_BASES = ("consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests")
RESERVED_PREFIX = "__"


def _check_dtype(dtype: str, where: str, allowed: tuple[str, ...] | None = None) -> str:
    choices = allowed or tuple(DTYPES)
    if dtype not in choices:
        raise UsageError(f"{where}: unknown dtype {dtype!r}", hint=f"use one of {', '.join(choices)}")
    return dtype


def _check_classification(value: str | None, where: str) -> str | None:
    if value is not None and value not in CLASSIFICATIONS:
        raise UsageError(f"{where}: classification {value!r} is not one of {', '.join(CLASSIFICATIONS)}")
    return value


@dataclass(frozen=True)
class Entity:
    """What features describe, identified by one or more typed join keys: `Entity("customer", {"customer_id": "int64"})`."""

    name: str
    join_keys: Mapping[str, str]
    description: str = ""

    def __post_init__(self) -> None:
        check_name(self.name, "entity name")
        if not self.join_keys:
            raise UsageError(f"entity {self.name!r} needs at least one join key")
        for key, dtype in self.join_keys.items():
            check_name(key, f"join key of entity {self.name!r}")
            _check_dtype(dtype, f"entity {self.name!r} key {key!r}", KEY_DTYPES)
        object.__setattr__(self, "join_keys", dict(self.join_keys))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "join_keys": dict(self.join_keys), "description": self.description}


@dataclass(frozen=True)
class Field:
    """One feature column of a view. `classification` and `pii` default to the view's."""

    name: str
    dtype: str
    description: str = ""
    classification: str | None = None
    pii: bool | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name, "field name")
        _check_dtype(self.dtype, f"field {self.name!r}")
        _check_classification(self.classification, f"field {self.name!r}")
        object.__setattr__(self, "tags", dict(self.tags))


@dataclass(frozen=True)
class FeatureView:
    """A versioned table of features for one entity, keyed by event timestamp."""

    name: str
    entity: str
    timestamp: str
    fields: tuple[Field, ...]
    ttl: str | None = None
    source: str | None = None
    transformation: str | None = None
    description: str = ""
    owner: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    classification: str = "internal"
    pii: bool = False
    retention: str | None = None  # rows whose event time is older than this are purged (`mlbox privacy purge`)
    purpose: str = ""  # why the data is processed (records of processing)
    legal_basis: str = ""  # one of LEGAL_BASES, or "" when not declared

    def __post_init__(self) -> None:
        check_name(self.name, "feature view name")
        if re.search(r"_v[0-9]+$", self.name):
            raise UsageError(f"feature view name {self.name!r} ends like a version suffix (_v1)", hint="`features sql` uses NAME_vN for versions")
        check_name(self.entity, f"entity of view {self.name!r}")
        check_name(self.timestamp, f"timestamp column of view {self.name!r}")
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "tags", dict(self.tags))
        if not self.fields:
            raise UsageError(f"feature view {self.name!r} has no fields")
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UsageError(f"feature view {self.name!r} declares field {dupes[0]!r} twice")
        if self.timestamp in names:
            raise UsageError(f"feature view {self.name!r}: the timestamp column {self.timestamp!r} is not a field")
        if self.ttl is not None:
            parse_duration(self.ttl)
        if self.retention is not None:
            parse_duration(self.retention)
        if self.legal_basis and self.legal_basis not in LEGAL_BASES:
            raise UsageError(
                f"feature view {self.name!r}: legal_basis {self.legal_basis!r} is not one of {', '.join(LEGAL_BASES)}",
                hint="the lawful bases of GDPR Art. 6(1); leave it out when not decided",
            )
        _check_classification(self.classification, f"feature view {self.name!r}")
        if self.transformation is not None and not self.transformation.strip():
            object.__setattr__(self, "transformation", None)

    @property
    def ttl_seconds(self) -> int | None:
        return parse_duration(self.ttl) if self.ttl else None

    @property
    def retention_seconds(self) -> int | None:
        return parse_duration(self.retention) if self.retention else None

    def get_field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise ValidationError(f"feature view {self.name!r} has no field {name!r}", hint=f"fields: {', '.join(f.name for f in self.fields)}")

    def field_classification(self, f: Field) -> str:
        return f.classification or self.classification

    def field_pii(self, f: Field) -> bool:
        return self.pii if f.pii is None else f.pii

    def schema_hash(self, entity: Entity) -> str:
        """Hash of everything that shapes the stored data; a change means a new version."""
        body = {
            "entity": entity.name,
            "keys": sorted(entity.join_keys.items()),
            "timestamp": self.timestamp,
            "fields": [(f.name, f.dtype) for f in self.fields],
            "transformation": " ".join((self.transformation or "").split()),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fields"] = [asdict(f) for f in self.fields]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureView:
        return parse_view(data, "stored definition")


@dataclass(frozen=True)
class Definitions:
    """Everything declared in a project's feature file."""

    entities: tuple[Entity, ...] = ()
    views: tuple[FeatureView, ...] = ()

    def __post_init__(self) -> None:
        for kind, items in (("entity", self.entities), ("feature view", self.views)):
            names = [i.name for i in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise UsageError(f"{kind} {dupes[0]!r} is declared twice")


VIEW_KEYS = {
    "name", "entity", "timestamp", "fields", "ttl", "source", "transformation",
    "description", "owner", "tags", "classification", "pii", "retention", "purpose", "legal_basis",
}  # fmt: skip
FIELD_KEYS = {"name", "dtype", "description", "classification", "pii", "tags"}
ENTITY_KEYS = {"name", "join_keys", "description"}


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(f"{where}: tags must be a mapping of strings")
    return {str(k): str(v) for k, v in value.items()}


def parse_entity(data: Mapping[str, Any], where: str) -> Entity:
    check_keys(data, ENTITY_KEYS, where)
    keys = data.get("join_keys")
    if not isinstance(keys, Mapping):
        raise UsageError(f"{where}: join_keys must map each key to its dtype, e.g. {{customer_id: int64}}")
    try:
        return Entity(str(data.get("name", "")), {str(k): str(v) for k, v in keys.items()}, str(data.get("description", "")))
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}", hint=exc.hint) from None


def parse_view(data: Mapping[str, Any], where: str) -> FeatureView:
    check_keys(data, VIEW_KEYS, where)
    name = data.get("name", "?")
    where = f"{where}: view {name!r}"
    raw_fields = data.get("fields")
    if not isinstance(raw_fields, list):
        raise UsageError(f"{where}: fields must be a list")
    fields = []
    for i, f in enumerate(raw_fields):
        check_keys(f, FIELD_KEYS, f"{where} field {i + 1}")
        try:
            fields.append(
                Field(
                    name=str(f.get("name", "")),
                    dtype=str(f.get("dtype", "")),
                    description=str(f.get("description", "")),
                    classification=f.get("classification"),
                    pii=f.get("pii"),
                    tags=_str_map(f.get("tags"), where),
                )
            )
        except UsageError as exc:
            raise UsageError(f"{where}: {exc.message}", hint=exc.hint) from None
    ttl, retention = data.get("ttl"), data.get("retention")
    try:
        return FeatureView(
            name=str(name),
            entity=str(data.get("entity", "")),
            timestamp=str(data.get("timestamp", "")),
            fields=tuple(fields),
            ttl=None if ttl is None else str(ttl),
            source=data.get("source"),
            transformation=data.get("transformation"),
            description=str(data.get("description", "")),
            owner=str(data.get("owner", "")),
            tags=_str_map(data.get("tags"), where),
            classification=str(data.get("classification", "internal")),
            pii=bool(data.get("pii", False)),
            retention=None if retention is None else str(retention),
            purpose=str(data.get("purpose") or ""),
            legal_basis=str(data.get("legal_basis") or ""),
        )
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}", hint=exc.hint) from None


def load_definitions(path: Path) -> Definitions:
    """Read a project's feature file (YAML, safe_load only)."""
    import yaml

    text = read_text_file(path, "feature file")  # a regular, bounded UTF-8 file: never a device or a binary
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{printable(path)}: not valid YAML: {printable(exc)}") from None
    check_keys(data, {"entities", "views"}, str(path))
    entities = tuple(parse_entity(e, f"{path} entity {i + 1}") for i, e in enumerate(data.get("entities") or []))
    views = tuple(parse_view(v, str(path)) for v in data.get("views") or [])
    known = {e.name for e in entities}
    for v in views:
        if v.entity not in known:
            raise UsageError(f"{path}: view {v.name!r} refers to unknown entity {v.entity!r}")
    return Definitions(entities, views)


@dataclass(frozen=True)
class FeatureRef:
    """`view[@version]:field` or `view[@version]:*`, parsed."""

    view: str
    version: int | None
    field: str  # "*" for all fields

    @classmethod
    def parse(cls, text: str) -> FeatureRef:
        if not isinstance(text, str) or text.count(":") != 1:
            raise UsageError(f"invalid feature reference {text!r}", hint="write view:field, view:* or view@2:field")
        left, fname = text.split(":")
        version = None
        if "@" in left:
            left, _, ver = left.partition("@")
            if not ver.isdigit() or int(ver) < 1:
                raise UsageError(f"invalid version in feature reference {text!r}")
            version = int(ver)
        check_name(left, "feature view name")
        if fname != "*":
            check_name(fname, "feature name")
        return cls(left, version, fname)
