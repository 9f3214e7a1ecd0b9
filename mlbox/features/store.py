"""FeatureStore: the feature store's service API over the catalog, offline and online stores."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb

from mlbox import clock
from mlbox.config import Settings
from mlbox.errors import UsageError, ValidationError
from mlbox.features import privacy, push, training
from mlbox.features.catalog import Catalog, ViewVersion
from mlbox.features.definitions import (
    DTYPES,
    Definitions,
    Entity,
    FeatureRef,
    FeatureView,
    load_definitions,
)
from mlbox.features.materialize import MaterializeResult, materialize
from mlbox.features.limits import IngestLimits
from mlbox.features.offline import IngestResult, OfflineStore, check_select
from mlbox.features.online import Lookup, OnlineStore, coerce_key, micros_to_datetime, now_us
from mlbox.features.online import sweep as sweep_online
from mlbox.features.plan import Change, plan
from mlbox.features.sandbox import sandbox
from mlbox.store.audit import AuditLog
from mlbox.store import crypt, purges
from mlbox.store.layout import BoxPaths
from mlbox.store.sqlite import Database

PLAN_CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class _OnlinePlan:
    lookups: tuple[tuple[Lookup, tuple[str, ...], dict[str, str], str], ...]  # lookup, out names, key dtypes, ref
    made_at: float


class FeatureStore:
    """Definitions, ingest, training sets, materialization, online reads, lineage and SQL."""

    def __init__(self, db: Database, audit: AuditLog, paths: BoxPaths, settings: Settings, actor: str = "system") -> None:
        self.db = db
        self.audit = audit
        self.paths = paths
        self.settings = settings
        self.actor = actor
        self.catalog = Catalog(db)
        temp = paths.home / "tmp"
        temp.mkdir(exist_ok=True)
        self.offline = OfflineStore(self.catalog, audit, paths.home, temp, IngestLimits.from_settings(settings))
        self.offline.sweep()
        self._online_plans: dict[tuple[str, ...], _OnlinePlan] = {}

    @cached_property
    def online(self) -> OnlineStore:
        return OnlineStore(
            self.paths.online_db,
            busy_timeout_ms=self.settings["store.busy_timeout_ms"],
            synchronous=self.settings["store.synchronous"],
        )

    def close(self) -> None:
        if "online" in self.__dict__:
            self.online.close()

    # definitions -----------------------------------------------------------
    def load(self, path: str | Path | None = None) -> Definitions:
        """Read the project's feature file (default: the `project.features` setting)."""
        return load_definitions(Path(path) if path else self.paths.home / self.settings["project.features"])

    def plan(self, defs: Definitions) -> list[Change]:
        return plan(defs, self.catalog.entities(), self.catalog.latest_views())

    def apply(self, defs: Definitions | Sequence[Entity | FeatureView], actor: str | None = None) -> list[Change]:
        """Record definitions: new entities and views, new versions on schema change, metadata updates."""
        if not isinstance(defs, Definitions):
            defs = Definitions(
                tuple(d for d in defs if isinstance(d, Entity)), tuple(d for d in defs if isinstance(d, FeatureView))
            )
        who = actor or self.actor
        with self.db.atomic():
            changes = self.plan(defs)
            entities = {**{e.name: e for e in self.catalog.entities()}, **{e.name: e for e in defs.entities}}
            for view in defs.views:
                if view.entity not in entities:
                    raise ValidationError(f"view {view.name!r} refers to unknown entity {view.entity!r}")
            views = {v.name: v for v in defs.views}
            for c in changes:
                if c.kind == "entity" and c.action in ("create", "update"):
                    self.catalog.put_entity(entities[c.name])
                elif c.kind == "view" and c.action in ("create", "new-version"):
                    v = self.catalog.add_version(views[c.name], entities[views[c.name].entity], who)
                    self.audit.record(who, "features.view.version", v.ref, {"hash": v.definition_hash})
                elif c.kind == "view" and c.action == "update":
                    self.catalog.update_metadata(self.catalog.view(c.name), views[c.name])
                if c.action in ("create", "update") and c.kind == "entity":
                    self.audit.record(who, f"features.entity.{c.action}", c.name, {"detail": c.detail})
                if c.action == "update" and c.kind == "view":
                    self.audit.record(who, "features.view.update", c.name, {"detail": c.detail})
        return changes

    # offline ----------------------------------------------------------------
    def view(self, ref: str) -> ViewVersion:
        name, _, ver = ref.partition("@")
        if ver and not ver.isdigit():
            raise UsageError(f"invalid view reference {ref!r}", hint="write NAME or NAME@VERSION")
        return self.catalog.view(name, int(ver) if ver else None)

    def ingest(
        self,
        view: str,
        source: Any = None,
        actor: str | None = None,
        *,
        duplicate_policy: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> IngestResult:
        """Validate and commit one batch from a CSV/Parquet path, DataFrame or Arrow table (default: the view's source)."""
        version = self.view(view)
        base = Path.cwd()
        if source is None:
            if not version.view.source:
                raise UsageError(f"view {version.name!r} declares no source; pass one")
            source, base = version.view.source, self.paths.home
        policy = duplicate_policy or self.settings["features.duplicate_policy"]
        if policy not in ("reject", "keep-last"):
            raise UsageError(f"unknown duplicate policy {policy!r}", hint="use reject or keep-last")
        return self.offline.ingest(
            version,
            source,
            actor or self.actor,
            duplicate_policy=policy,
            naive_timestamps=self.settings["features.naive_timestamps"],
            base_dir=base,
            progress=progress,
        )

    def snapshot(self) -> int:
        return self.catalog.snapshot()

    def training_set(
        self,
        labels: Any,
        features: Sequence[str],
        snapshot: int | None = None,
        *,
        timestamp: str | None = None,
        out: str | Path | None = None,
        as_arrow: bool = False,
        actor: str | None = None,
        protected: str = "mask",
    ) -> training.TrainingSet:
        """Point-in-time correct features for each label row, plus a reproducible fingerprint.

        At the current snapshot, staged pushes are flushed first, so the set sees every value served so far.
        `protected` is the disclosure of pii/restricted fields (mlbox.features.privacy): "mask" by
        default, "refuse", or "raw" for a reader with `features.read_pii` and for training itself.
        """
        disclosure = privacy.check_disclosure(protected)
        target = Path(out) if out else None
        staged = target if target is None or disclosure == "raw" else self.offline.temp_dir / f"ts-{uuid.uuid4().hex}.parquet"
        if snapshot is None and push.pending(self.catalog):
            self.flush(actor=actor)
        try:
            result = training.build(
                self.catalog,
                self.offline,
                labels,
                list(features),
                snapshot=snapshot,
                timestamp=timestamp,
                out=staged,
                as_arrow=as_arrow,
                base_dir=Path.cwd(),
            )
            if disclosure != "raw":  # the raw set stays inside the box; only its masked copy leaves
                result = privacy.restrict_training_set(result, self.catalog, disclosure, target)
        finally:
            if staged is not None and staged != target:
                staged.unlink(missing_ok=True)
        with self.db.atomic():
            self.catalog.record_training_set(
                result.fingerprint, result.snapshot, result.features, result.batches, result.label_rows, actor or self.actor
            )
            self.audit.record(actor or self.actor, "features.training_set", result.fingerprint, training.audit_details(result))
        return result

    # online -----------------------------------------------------------------
    def materialize(
        self,
        view: str | None = None,
        *,
        full: bool | None = None,
        actor: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[MaterializeResult]:
        """Refresh the online tables: NAME@V alone, else the latest version of each view (or of NAME)
        plus every version ever materialized or read by a recorded training set, so a model
        trained on `view@1` keeps getting fresh values after `view@2` appears."""
        who = actor or self.actor
        versions = self._versions_to_materialize(view)
        return [
            materialize(
                self.catalog,
                self.offline,
                self.online,
                self.audit,
                v,
                who,
                full=full,
                chunk_rows=self.settings["features.online_chunk_rows"],
                progress=progress,
                flush=lambda v: push.flush(self.catalog, self.offline, v, who),  # a rebuild reads batches only
            )
            for v in versions
        ]

    def _versions_to_materialize(self, view: str | None) -> list[ViewVersion]:
        if view and "@" in view:
            return [self.view(view)]
        if view:
            self.view(view)  # NotFound with a hint
        used = self.catalog.versions_in_use()
        latest = {(v.name, v.version) for v in self.catalog.latest_views()}
        return [
            v
            for v in self.catalog.versions(view)
            if (v.name, v.version) in latest or (v.name, v.version) in used
        ]

    def push(self, view: str, rows: Any, *, actor: str) -> dict[str, Any]:
        """Write rows (a list of dicts, a DataFrame, an Arrow table or a CSV/Parquet path) for a view now.

        Validated as ingest validates a batch, staged durably in meta.db, then upserted into
        the online store (newer event time wins; a tie goes to the later push). Staged rows
        become one immutable offline batch at the next flush: when a push finds at least
        `features.push_flush_rows` staged rows for the view version or the oldest staged
        more than `features.push_flush_seconds` ago, at `flush()`, before `materialize`
        and before a training set at the current snapshot.
        """
        version = self.view(view)
        table, notes = push.validate(
            version,
            push.as_source(rows),
            duplicate_policy=self.settings["features.duplicate_policy"],
            naive_timestamps=self.settings["features.naive_timestamps"],
            base_dir=Path.cwd(),
            limits=self.offline.limits,
        )
        push.stage(self.catalog, self.audit, version, table, actor)
        push.to_online(self.online, version, table)
        waiting = push.pending(self.catalog, version)
        flushed = None
        if waiting:
            age = (clock.now() - clock.parse_iso(waiting[0]["oldest"])).total_seconds()
            if waiting[0]["rows"] >= self.settings["features.push_flush_rows"] or age >= self.settings["features.push_flush_seconds"]:
                flushed = push.flush(self.catalog, self.offline, version, actor)
        left = push.pending(self.catalog, version)
        return {
            "view": version.ref,
            "rows": table.num_rows,
            "online": True,
            "staged": left[0]["rows"] if left else 0,
            "flushed_batch": flushed,
            "notes": notes,
        }

    def flush(self, view: str | None = None, actor: str | None = None) -> list[dict[str, Any]]:
        """Commit staged pushes as offline batches (all views, or NAME / NAME@V); one entry per batch written."""
        out = []
        for entry in push.pending(self.catalog):
            version = self.catalog.view(entry["view"], int(entry["version"]))
            if view and view not in (version.name, version.ref):
                continue
            batch = push.flush(self.catalog, self.offline, version, actor or self.actor)
            if batch is not None:
                out.append({"view": version.ref, "rows": entry["rows"], "batch": batch})
        return out

    def pending_pushes(self) -> list[dict[str, Any]]:
        """Staged rows not yet flushed, per view version: [{view, version, rows, oldest}]."""
        return push.pending(self.catalog)

    def online_leftovers(self) -> list[str]:
        """Staging or rebuild tables in online.db left by a killed writer (for `mlbox doctor`)."""
        return self.online.leftovers()

    def sweep_online(self) -> list[str]:
        """Drop those leftovers (`mlbox doctor --repair`); returns their names."""
        names = self.online.leftovers()
        if names:
            sweep_online(self.online.writer)  # opening the writer may already have dropped them
        return names

    def _online_plan(self, features: tuple[str, ...]) -> _OnlinePlan:
        cached = self._online_plans.get(features)
        if cached and time.monotonic() - cached.made_at < PLAN_CACHE_SECONDS:
            return cached
        by_view: dict[str, tuple[ViewVersion, list[str]]] = {}
        for text in features:
            ref = FeatureRef.parse(text)
            key = f"{ref.view}@{ref.version or ''}"
            if key not in by_view:
                by_view[key] = (self._materialized_version(ref.view, ref.version), [])
            version, names = by_view[key]
            wanted = [f.name for f in version.view.fields] if ref.field == "*" else [version.view.get_field(ref.field).name]
            names += [n for n in wanted if n not in names]
        lookups = []
        for version, names in by_view.values():
            lookups.append((self.online.prepare(version, names), tuple(names), dict(version.entity.join_keys), version.ref))
        made = _OnlinePlan(tuple(lookups), time.monotonic())
        if len(self._online_plans) > 256:
            self._online_plans.clear()
        self._online_plans[features] = made
        return made

    def _materialized_version(self, name: str, version: int | None) -> ViewVersion:
        if version is not None:
            return self.catalog.view(name, version)
        versions = self.catalog.versions(name)
        done = [v for v in versions if self.catalog.last_materialization(v)]
        return done[-1] if done else self.catalog.view(name)

    def get_online_features(
        self,
        features: Sequence[str],
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        with_timestamps: bool = False,
        native: bool = False,
        protected: str = "raw",
    ) -> dict[str, list[Any]]:
        """Latest materialized values, columnar: {column: [value per entity row]}; missing entities get None.

        Values come in the canonical form a model's signature encodes (timestamps and dates
        as float seconds since the epoch; `native` gives datetime/date objects instead). A
        value older than its view's TTL at `clock.now()` is None, as in a training set with
        labels at that instant. The entity rows' own columns come first; with
        `with_timestamps`, each view adds `<view@version>:__ts` (the event time of the stored
        row, ISO-8601) and `<view@version>:__status` ("ok", "expired" past the TTL, or
        "missing" for an unknown entity).

        `protected` is the disclosure of pii/restricted fields: "raw" by default, because this is the
        lookup predictions feed models with; interfaces pass "mask" or "refuse" for a caller
        without `features.read_pii` (`mlbox.security.roles.disclosure`).
        """
        if len(entity_rows) == 1:
            result: dict[str, list[Any]] = {k: [v] for k, v in entity_rows[0].items()}
        elif not entity_rows:
            return {}
        else:
            result = _columns(entity_rows)
        online_plan = self._online_plan(tuple(features))
        hidden = None if protected == "raw" else privacy.online_hidden(self.catalog, online_plan.lookups, protected)
        now = None
        for lookup, _names, key_types, ref in online_plan.lookups:
            try:
                flat = len(key_types) == 1  # one join key: its bare values, no 1-tuples
                if flat:
                    ((k, t),) = key_types.items()
                    keys: Sequence[Any] = _int_keys(result.get(k), t) or [coerce_key(row[k], t, k) for row in entity_rows]
                else:
                    keys = [tuple([coerce_key(row[k], t, k) for k, t in key_types.items()]) for row in entity_rows]
            except KeyError as exc:
                raise ValidationError(f"entity row lacks join key {exc.args[0]!r} needed by {ref}") from None
            if now is None and lookup.ttl_us is not None:
                now = now_us()  # one instant for every view of the request
            got = self.online.read(lookup, keys, now=now, native=native, out=result, flat=flat)
            if with_timestamps:
                result[f"{ref}:__ts"] = [None if t is None else micros_to_datetime(t).isoformat() for t in got.stamps]
                expired = got.expired or [False] * len(keys)
                result[f"{ref}:__status"] = [
                    "missing" if t is None else "expired" if e else "ok" for t, e in zip(got.stamps, expired, strict=True)
                ]
        if hidden:
            privacy.mask_columns(result, hidden)
        return result

    # discovery ----------------------------------------------------------------
    def list_views(self) -> list[dict[str, Any]]:
        out = []
        for v in self.catalog.latest_views():
            batches = self.catalog.batches(v.name, v.version)
            out.append(
                {
                    "view": v.name,
                    "version": v.version,
                    "entity": v.entity.name,
                    "fields": len(v.view.fields),
                    "batches": len(batches),
                    "rows": sum(b.row_count for b in batches),
                    "classification": v.view.classification,
                    "pii": any(v.view.field_pii(f) for f in v.view.fields),
                    "owner": v.view.owner,
                }
            )
        return out

    def show(self, ref: str, *, protected: str = "mask") -> dict[str, Any]:
        """A view version's definition, versions, fields with statistics, batches and materializations.

        Unless `protected` is "raw", a protected field's statistics keep only counts (its top values
        and range are values); "refuse" masks too, since showing a view is not reading the field.
        """
        disclosure = privacy.check_disclosure(protected)
        version = self.view(ref)
        v = version.view
        batches = self.catalog.batches(version.name, version.version)
        latest_stats = dict(batches[-1].stats["fields"]) if batches else {}
        if disclosure != "raw":
            for name in privacy.protected(version):
                if name in latest_stats:
                    latest_stats[name] = privacy.mask_stats(latest_stats[name])
        return {
            "view": version.ref,
            "entity": {"name": version.entity.name, "join_keys": dict(version.entity.join_keys)},
            "timestamp": v.timestamp,
            "ttl": v.ttl,
            "retention": v.retention,
            "purpose": v.purpose,
            "legal_basis": v.legal_basis,
            "description": v.description,
            "owner": v.owner,
            "tags": dict(v.tags),
            "classification": v.classification,
            "source": v.source,
            "transformation": v.transformation,
            "definition_hash": version.definition_hash,
            "versions": [
                {"version": x.version, "hash": x.definition_hash[:12], "created_at": x.created_at, "created_by": x.created_by}
                for x in self.catalog.versions(version.name)
            ],
            "fields": [
                {
                    "name": f.name,
                    "dtype": f.dtype,
                    "description": f.description,
                    "classification": v.field_classification(f),
                    "pii": v.field_pii(f),
                    "tags": dict(f.tags),
                    "stats": latest_stats.get(f.name, {}),
                }
                for f in v.fields
            ],
            "batches": [b.as_dict() for b in batches],
            "materializations": self.catalog.materializations(version.name),
            "purges": [p.statement() for p in purges.of(self.db, "features", [version.ref])],
        }

    def lineage(self, name: str) -> dict[str, Any]:
        """Sources → batches → versions, and the training sets that read them."""
        versions = self.catalog.versions(name)
        if not versions:
            self.catalog.view(name)  # raises NotFound with a hint
        out_versions, ids = [], set()
        for v in versions:
            batches = self.catalog.batches(v.name, v.version)
            ids |= {b.id for b in batches}
            out_versions.append(
                {
                    "version": v.version,
                    "definition_hash": v.definition_hash,
                    "created_at": v.created_at,
                    "batches": [
                        {"id": b.id, "source": b.source, "rows": b.row_count, "sha256": b.sha256, "created_at": b.created_at}
                        for b in batches
                    ],
                }
            )
        sets = self.catalog.training_sets_using(ids)
        return {
            "view": name,
            "versions": out_versions,
            "purges": [p.as_dict() for p in purges.of(self.db, "features", [v.ref for v in versions])],
            "training_sets": [
                {"fingerprint": s["fingerprint"], "snapshot": s["snapshot"], "rows": s["label_rows"], "created_at": s["created_at"]}
                for s in sets
            ],
        }

    def sql(
        self, query: str, snapshot: int | None = None, *, protected: str = "mask"
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only SELECT over the committed views; returns (column names, rows).

        `protected` is the disclosure of pii/restricted fields: "mask" by default, "refuse", or "raw"
        for a reader with `features.read_pii`. Unless raw, DuckDB gets no path at all: each view
        version is an Arrow dataset without its protected columns (mlbox.features.privacy).
        """
        disclosure = privacy.check_disclosure(protected)
        con = self.offline.connect()
        try:
            check_select(con, query, "features sql")
            snap = self.catalog.snapshot() if snapshot is None else snapshot
            for v in (v for v in self.catalog.versions() if v.commit_seq <= snap):  # oldest first: NAME ends at the latest
                files = [str(p) for _, p in self.offline.files(v, snap)]
                guarded = privacy.masked_relation(v, [Path(f) for f in files], disclosure) if disclosure != "raw" else None
                if guarded is not None:
                    con.register(guarded.data_name, guarded.dataset)
                    files = []  # the masked relation replaces the batch files below
                cols = ", ".join(
                    f'NULL::{t} AS "{c}"'
                    for c, t in [
                        *((k, DTYPES[d]) for k, d in v.entity.join_keys.items()),
                        (v.view.timestamp, "TIMESTAMPTZ"),
                        *((f.name, DTYPES[f.dtype]) for f in v.view.fields),
                    ]
                )
                body = f"SELECT * FROM {crypt.source(con, files)}" if files else f"SELECT {cols} WHERE false"
                body = guarded.select if guarded is not None else body
                con.execute(f'CREATE OR REPLACE TEMP VIEW "{v.name}_v{v.version}" AS {body}')
                con.execute(f'CREATE OR REPLACE TEMP VIEW "{v.name}" AS {body}')
            # the lockdown transformations run under, too; a non-raw reader is allowed no path at all
            sandbox(con, directories=[self.offline.root] if disclosure == "raw" else [])
            try:
                cur = con.execute(query)
                columns = [d[0] for d in cur.description or []]
                return columns, cur.fetchall()
            except duckdb.Error as exc:
                refused = privacy.refused_column(str(exc))
                if refused is not None:
                    raise refused from None
                raise UsageError(f"query failed: {str(exc).strip().splitlines()[0]}") from None
        finally:
            con.close()


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Entity rows as columns, in first-seen key order; a row without a key has None there."""
    first = rows[0]
    width = len(first)
    if set(map(len, rows)) == {width}:  # the common case: every row has the same keys
        try:
            return {key: [row[key] for row in rows] for key in first}
        except KeyError:
            pass
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return {key: [row.get(key) for row in rows] for key in names}


def _int_keys(column: list[Any] | None, dtype: str) -> list[Any] | None:
    """A request's integer join keys, as given, when every one is a plain in-range int (the hot path of
    a 100-entity lookup: C-level checks, no call per key), else None for `coerce_key` to judge."""
    if column is None or dtype not in ("int64", "int32") or set(map(type, column)) != {int}:
        return None
    if not (-(2**63) <= min(column) and max(column) < 2**63):
        return None
    return column
