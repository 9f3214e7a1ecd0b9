"""The feature catalog in meta.db: entities, view versions, committed batches, materializations.

All feature-store SQL against meta.db lives here. Every committed view version and batch
takes the next value of one catalog counter (`commit_seq`); a *snapshot* is a value of
that counter, and reading at snapshot S sees exactly the versions and batches committed
at or before S, whatever is committed later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from mlbox import clock
from mlbox.errors import NotFound
from mlbox.features.definitions import Entity, FeatureView, parse_entity
from mlbox.store.sqlite import Database


@dataclass(frozen=True)
class ViewVersion:
    """One recorded version of a feature view: its entity, definition, hash and the snapshot that created it."""
    name: str
    version: int
    entity: Entity
    view: FeatureView
    definition_hash: str
    commit_seq: int
    created_at: str
    created_by: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def keys(self) -> list[str]:
        return list(self.entity.join_keys)


@dataclass(frozen=True)
class Batch:
    """One committed, immutable Parquet batch of a view version: path, sha256, rows, time range, statistics."""
    id: int
    view: str
    version: int
    commit_seq: int
    path: str  # relative to the box
    source: str
    row_count: int
    min_ts: str | None
    max_ts: str | None
    sha256: str
    stats: dict[str, Any]
    created_at: str
    created_by: str
    visible_seq: int | None = None  # a rewritten batch: the snapshot its original became visible at
    replaces: int | None = None  # a rewritten batch: the id of the batch it replaced
    superseded_seq: int | None = None  # the snapshot that replaced this batch (its file is gone)

    @property
    def visible_at(self) -> int:
        """The first snapshot that reads this batch (a rewrite keeps its original's)."""
        return self.commit_seq if self.visible_seq is None else self.visible_seq

    def as_dict(self, with_stats: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "stats"}
        if with_stats:
            out["stats"] = self.stats
        return out


def _batch(row: dict[str, Any]) -> Batch:
    row = dict(row)
    row["stats"] = json.loads(row["stats"])
    return Batch(**row)


class Catalog:
    """Repository over the feature tables of meta.db."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # snapshots -----------------------------------------------------------
    def snapshot(self) -> int:
        """The current snapshot id: reads pinned to it never change."""
        return int(self.db.scalar("SELECT value FROM catalog_counter WHERE id = 1"))

    def _next_seq(self) -> int:
        return int(self.db.scalar("UPDATE catalog_counter SET value = value + 1 WHERE id = 1 RETURNING value"))

    # entities ------------------------------------------------------------
    def entities(self) -> list[Entity]:
        rows = self.db.query("SELECT name, join_keys, description FROM entities ORDER BY name")
        return [parse_entity({**r, "join_keys": json.loads(r["join_keys"])}, "catalog") for r in rows]

    def entity(self, name: str) -> Entity:
        for e in self.entities():
            if e.name == name:
                return e
        raise NotFound(f"no entity {name!r}", hint="declare it in the feature file and run `mlbox features apply`")

    def put_entity(self, entity: Entity) -> None:
        self.db.execute(
            "INSERT INTO entities (name, join_keys, description, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET description = excluded.description",
            (entity.name, json.dumps(dict(entity.join_keys)), entity.description, clock.iso()),
        )

    # views ---------------------------------------------------------------
    def _version(self, row: dict[str, Any], entities: dict[str, Entity]) -> ViewVersion:
        return ViewVersion(
            name=row["name"],
            version=row["version"],
            entity=entities[row["entity"]],
            view=FeatureView.from_dict(json.loads(row["definition"])),
            definition_hash=row["definition_hash"],
            commit_seq=row["commit_seq"],
            created_at=row["created_at"],
            created_by=row["created_by"],
        )

    def versions(self, name: str | None = None) -> list[ViewVersion]:
        entities = {e.name: e for e in self.entities()}
        sql = "SELECT * FROM feature_views" + (" WHERE name = ?" if name else "") + " ORDER BY name, version"
        return [self._version(r, entities) for r in self.db.query(sql, (name,) if name else ())]

    def view(self, name: str, version: int | None = None, snapshot: int | None = None) -> ViewVersion:
        """One version of a view: the given one, else the latest committed at `snapshot` (default: now)."""
        candidates = [
            v for v in self.versions(name) if (snapshot is None or v.commit_seq <= snapshot) and (version in (None, v.version))
        ]
        if not candidates:
            if version is not None and self.versions(name):
                raise NotFound(f"feature view {name!r} has no version {version}")
            if snapshot is not None and self.versions(name):
                raise NotFound(f"feature view {name!r} did not exist yet at snapshot {snapshot}")
            raise NotFound(f"no feature view {name!r}", hint="`mlbox features list` shows the views")
        found = candidates[-1]
        if snapshot is None:
            return found
        row = self.db.one(  # metadata (TTL, description, ...) as it was at the snapshot
            "SELECT definition FROM feature_view_definitions WHERE name = ? AND version = ? AND commit_seq <= ? "
            "ORDER BY commit_seq DESC LIMIT 1",
            (found.name, found.version, snapshot),
        )
        if row is None:
            return found
        return replace(found, view=FeatureView.from_dict(json.loads(row["definition"])))

    def latest_views(self) -> list[ViewVersion]:
        latest: dict[str, ViewVersion] = {}
        for v in self.versions():
            latest[v.name] = v
        return list(latest.values())

    def add_version(self, view: FeatureView, entity: Entity, actor: str) -> ViewVersion:
        with self.db.atomic():
            current = self.db.scalar("SELECT max(version) FROM feature_views WHERE name = ?", (view.name,)) or 0
            seq, definition = self._next_seq(), json.dumps(view.as_dict(), sort_keys=True)
            self.db.execute(
                "INSERT INTO feature_views (name, version, entity, definition, definition_hash, commit_seq, created_at, "
                "created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (view.name, current + 1, entity.name, definition, view.schema_hash(entity), seq, clock.iso(), actor),
            )
            self.db.execute(
                "INSERT INTO feature_view_definitions (name, version, commit_seq, definition) VALUES (?, ?, ?, ?)",
                (view.name, current + 1, seq, definition),
            )
        return self.view(view.name, current + 1)

    def update_metadata(self, version: ViewVersion, view: FeatureView) -> None:
        """Replace the version's metadata; the old one stays readable at earlier snapshots."""
        definition = json.dumps(view.as_dict(), sort_keys=True)
        with self.db.atomic():
            self.db.execute(
                "UPDATE feature_views SET definition = ? WHERE name = ? AND version = ?",
                (definition, version.name, version.version),
            )
            self.db.execute(
                "INSERT INTO feature_view_definitions (name, version, commit_seq, definition) VALUES (?, ?, ?, ?)",
                (version.name, version.version, self._next_seq(), definition),
            )

    # batches -------------------------------------------------------------
    def batches(self, name: str, version: int, snapshot: int | None = None) -> list[Batch]:
        """The live batches of a version (at `snapshot`: those visible then), oldest commit first.

        A batch superseded by a rewrite (erasure, retention: mlbox.features.rewrite) is never
        read again, at any snapshot: its rewritten batch stands in for it from the snapshot the
        original became visible at, so an old snapshot reads the same rows minus the removed ones.
        """
        sql = "SELECT * FROM feature_batches WHERE view = ? AND version = ? AND superseded_seq IS NULL"
        params: list[Any] = [name, version]
        if snapshot is not None:
            sql += " AND coalesce(visible_seq, commit_seq) <= ?"
            params.append(snapshot)
        return [_batch(r) for r in self.db.query(sql + " ORDER BY coalesce(visible_seq, commit_seq), commit_seq", params)]

    def all_batch_paths(self) -> set[str]:
        """Paths of live batches: a superseded batch's file is an orphan the sweep removes."""
        return {r["path"] for r in self.db.query("SELECT path FROM feature_batches WHERE superseded_seq IS NULL")}

    def add_batch(
        self,
        version: ViewVersion,
        *,
        path: str,
        source: str,
        row_count: int,
        min_ts: str | None,
        max_ts: str | None,
        sha256: str,
        stats: dict[str, Any],
        actor: str,
    ) -> Batch:
        """Insert a batch row; call inside the transaction that also renames its file into place."""
        seq = self._next_seq()
        batch_id = self.db.execute(
            "INSERT INTO feature_batches (view, version, commit_seq, path, source, row_count, min_ts, max_ts, sha256, "
            "stats, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                version.name,
                version.version,
                seq,
                path,
                source,
                row_count,
                min_ts,
                max_ts,
                sha256,
                json.dumps(stats, default=str),
                clock.iso(),
                actor,
            ),
        ).lastrowid
        return _batch(self.db.one("SELECT * FROM feature_batches WHERE id = ?", (batch_id,)) or {})

    def mark_superseded(self, batch_ids: list[int]) -> int:
        """Take the next snapshot and mark these batches replaced at it, clearing their statistics
        (top values, quantiles and ranges are values); call inside the rewrite's transaction."""
        seq = self._next_seq()
        self.db.executemany(
            "UPDATE feature_batches SET superseded_seq = ?, stats = '{}' WHERE id = ?", [(seq, i) for i in batch_ids]
        )
        return seq

    def rewrites(self, name: str | None = None, after: int | None = None) -> list[dict[str, Any]]:
        """Recorded rewrites (erasures, retention purges) of a view, or of all, committed after snapshot `after`."""
        sql, params = "SELECT * FROM feature_rewrites WHERE 1 = 1", list[Any]()
        if name is not None:
            sql, params = sql + " AND view = ?", [*params, name]
        if after is not None:
            sql, params = sql + " AND commit_seq > ?", [*params, after]
        return self.db.query(sql + " ORDER BY id", params)

    # materializations ----------------------------------------------------
    def last_materialization(self, version: ViewVersion) -> dict[str, Any] | None:
        return self.db.one(
            "SELECT * FROM materializations WHERE view = ? AND version = ? ORDER BY id DESC LIMIT 1",
            (version.name, version.version),
        )

    def add_materialization(self, version: ViewVersion, through_seq: int, rows: int, mode: str) -> None:
        self.db.execute(
            "INSERT INTO materializations (view, version, through_seq, mode, row_count, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (version.name, version.version, through_seq, mode, rows, clock.iso()),
        )

    def materializations(self, name: str) -> list[dict[str, Any]]:
        return self.db.query("SELECT * FROM materializations WHERE view = ? ORDER BY id", (name,))

    # training sets -------------------------------------------------------
    def record_training_set(
        self, fingerprint: str, snapshot: int, features: list[str], batches: list[int], label_rows: int, actor: str
    ) -> None:
        self.db.execute(
            "INSERT INTO training_sets (fingerprint, snapshot, features, batches, label_rows, created_at, created_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(fingerprint) DO NOTHING",
            (fingerprint, snapshot, json.dumps(features), json.dumps(batches), label_rows, clock.iso(), actor),
        )

    def training_set(self, fingerprint: str) -> dict[str, Any]:
        row = self.db.one("SELECT * FROM training_sets WHERE fingerprint = ?", (fingerprint,))
        if row is None:
            raise NotFound(f"no training set with fingerprint {fingerprint!r}")
        row["features"], row["batches"] = json.loads(row["features"]), json.loads(row["batches"])
        return row

    def training_sets_using(self, batch_ids: set[int]) -> list[dict[str, Any]]:
        out = []
        for row in self.db.query("SELECT * FROM training_sets ORDER BY created_at"):
            used = set(json.loads(row["batches"]))
            if used & batch_ids:
                row["features"], row["batches"] = json.loads(row["features"]), sorted(used)
                out.append(row)
        return out

    def versions_in_use(self) -> set[tuple[str, int]]:
        """(view, version) of every version ever materialized or read by a recorded training set."""
        used = {(r["view"], int(r["version"])) for r in self.db.query("SELECT DISTINCT view, version FROM materializations")}
        for row in self.db.query("SELECT features FROM training_sets"):
            for ref in json.loads(row["features"]):  # "view@version:field"
                name, _, rest = str(ref).partition("@")
                version = rest.partition(":")[0]
                if version.isdigit():
                    used.add((name, int(version)))
        return used
