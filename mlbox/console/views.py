"""One feature view in detail: fields with badges, batches, statistics, a few values masked by role, lineage.

Everything but the sample comes from the catalog in meta.db (no DuckDB, no scan of a batch): the
statistics are the ones each batch recorded when it was written, summed over the live batches of
the version. A protected field's (pii or restricted) statistics lose their values (range, mean,
top values) through `privacy.mask_stats` unless the reader holds `features.read_pii`.

The sample is read through the feature store's own read paths with the reader's disclosure
(`roles.disclosure`: raw with `features.read_pii`, else `privacy.protected_reads`): the online
lookup (`mlbox features get`) for a role that may read online values, else `mlbox features sql`
over the version's batches, the read a viewer may make. A masked value comes back masked from the
store; under `protected_reads = refuse` the protected fields are not asked for at all.

Lineage: every version of the view, its declared source, the recorded training sets that read it
and the registered model versions trained on it (through their training set's fingerprint, or fed
the view's fields: the joins of privacy/report.py, for any view).
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlbox.console.service import Console
    from mlbox.features.catalog import Batch, Catalog, ViewVersion
    from mlbox.features.store import FeatureStore

Row = dict[str, Any]
BATCHES = 20  # newest batches listed; `batch_count` says how many there are
SAMPLE = 5  # rows of values
MODELS = 50  # model versions listed in the lineage


def view_detail(console: Console, ref: str) -> Row:
    """The view (NAME or NAME@VERSION; default its latest version) as the acting user may see it."""
    from mlbox.features.catalog import Catalog
    from mlbox.features.privacy import is_protected
    from mlbox.security.roles import disclosure

    console._require("features show")
    box = console.box
    catalog = Catalog(box.db)
    version = _version(catalog, ref)
    v = version.view
    how = disclosure(console.actor, box.settings["privacy.protected_reads"])
    guarded = {f.name for f in v.fields if is_protected(v, f)}
    batches = catalog.batches(version.name, version.version)
    fields = [
        {"name": f.name, "dtype": f.dtype, "classification": v.field_classification(f) or "", "pii": v.field_pii(f),
         "masked": how != "raw" and f.name in guarded}
        for f in v.fields
    ]  # fmt: skip
    return {
        "view": version.name, "version": version.version, "entity": version.entity.name,
        "keys": list(version.entity.join_keys), "owner": v.owner or "", "classification": v.classification or "",
        "description": v.description or "", "disclosure": how, "fields": fields,
        "batch_count": len(batches), "rows": sum(b.row_count for b in batches),
        "batches": [_batch(b) for b in reversed(batches[-BATCHES:])],
        "stats": stats(version, batches, masked={str(f["name"]) for f in fields if f["masked"]}),
        "sample": _sample(console, version, guarded, how),
        "lineage": lineage(console, catalog, version),
    }  # fmt: skip


def _version(catalog: Catalog, ref: str) -> ViewVersion:
    from mlbox.errors import UsageError

    name, _, ver = ref.partition("@")
    if ver and not ver.isdigit():
        raise UsageError(f"invalid view reference {ref!r}", hint="write NAME or NAME@VERSION")
    return catalog.view(name, int(ver) if ver else None)


def _batch(b: Batch) -> Row:
    return {"id": b.id, "rows": b.row_count, "min_ts": b.min_ts, "max_ts": b.max_ts, "sha256": b.sha256[:12],
            "source": b.source, "created_at": b.created_at, "created_by": b.created_by}  # fmt: skip


# statistics -----------------------------------------------------------------------------------
def stats(version: ViewVersion, batches: list[Batch], masked: set[str]) -> dict[str, Row]:
    """Per field over the live batches: count and nulls summed, min and max of the batches', the mean weighted
    by count; `distinct` is the largest batch's estimate (a lower bound over several batches). A masked field
    keeps its counts only, and is marked `masked`."""
    from mlbox.features.privacy import mask_stats

    out: dict[str, Row] = {}
    for f in version.view.fields:
        per = [b.stats.get("fields", {}).get(f.name) for b in batches]
        seen = [mask_stats(s) if f.name in masked else s for s in per if isinstance(s, dict)]
        row: Row = {"count": sum(int(s.get("count") or 0) for s in seen),
                    "nulls": sum(int(s.get("nulls") or 0) for s in seen), "batches": len(seen)}  # fmt: skip
        if f.name in masked:
            row["masked"] = True
        for key, pick in (("min", min), ("max", max)):
            values = [s[key] for s in seen if s.get(key) is not None]
            if values and len({type(x) for x in values}) == 1:
                row[key] = _json(pick(values))
        weighted = [(float(s["mean"]), int(s.get("count") or 0)) for s in seen if isinstance(s.get("mean"), (int, float))]
        total = sum(n for _, n in weighted)
        if total:
            row["mean"] = _json(sum(m * n for m, n in weighted) / total)
        distinct = [int(s["distinct"]) for s in seen if isinstance(s.get("distinct"), int)]
        if distinct:
            row["distinct"] = max(distinct)
        out[f.name] = row
    return out


# the sample ---------------------------------------------------------------------------------------
def _sample(console: Console, version: ViewVersion, guarded: set[str], how: str) -> Row:
    """A few rows of values: {"source": "online"|"offline"|None, "columns", "rows", "masked", "refused", "note"}."""
    names = [f.name for f in version.view.fields]
    asked = [n for n in names if not (how == "refuse" and n in guarded)]
    out: Row = {"source": None, "columns": [], "rows": [], "masked": sorted(guarded & set(asked)) if how != "raw" else [],
                "refused": [n for n in names if n not in asked], "note": ""}  # fmt: skip
    if not asked:
        out["note"] = "every field is protected: refused (privacy.protected_reads = refuse)"
        return out
    fs = console.box.features
    if console.me().may("features get"):
        found = _online(fs, version, asked, how)
        if found is not None:
            return {**out, **found}
    found = _offline(fs, version, asked, how)
    return {**out, **found} if found is not None else {**out, "note": "no batches yet"}


def _online(fs: FeatureStore, version: ViewVersion, asked: list[str], how: str) -> Row | None:
    """The newest entities of the version's online table, looked up as `mlbox features get` does."""
    keys = list(version.entity.join_keys)
    if not fs.paths.online_db.exists():
        return None  # not materialized (and online.db is not created by looking)
    entities = fs.online.newest_keys(version, SAMPLE)
    if not entities:
        return None
    got = fs.get_online_features([f"{version.ref}:{n}" for n in asked], entities, with_timestamps=True, native=True,
                                 protected=how)  # fmt: skip
    status = got.get(f"{version.ref}:__status", [None] * len(entities))
    columns = [*keys, *asked, "status"]
    rows = [[*(_json(got[c][i]) for c in [*keys, *asked]), status[i]] for i in range(len(entities))]
    return {"source": "online", "columns": columns, "rows": rows,
            "note": f"the {len(rows)} newest entities in online.db, as a lookup returns them now (TTL applied)"}  # fmt: skip


def _offline(fs: FeatureStore, version: ViewVersion, asked: list[str], how: str) -> Row | None:
    """The newest rows of the version's batches, through `mlbox features sql` (masked relations unless raw)."""
    from mlbox.features.pit import q

    if not fs.catalog.batches(version.name, version.version):
        return None
    keys, ts = list(version.entity.join_keys), version.view.timestamp
    columns = [*keys, ts, *asked]
    sql = (f"SELECT {', '.join(q(c) for c in columns)} FROM {q(f'{version.name}_v{version.version}')} "
           f"ORDER BY {q(ts)} DESC, {', '.join(q(k) for k in keys)} LIMIT {SAMPLE}")  # fmt: skip
    names, rows = fs.sql(sql, protected=how)
    return {"source": "offline", "columns": names, "rows": [[_json(x) for x in r] for r in rows],
            "note": f"the {len(rows)} newest rows of the offline store (this role may not read online values)"}  # fmt: skip


def _json(value: Any) -> Any:
    """A value as JSON keeps it: times as ISO-8601 text, a non-finite float as None, anything else odd as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


# lineage ---------------------------------------------------------------------------------------
def lineage(console: Console, catalog: Catalog, version: ViewVersion) -> Row:
    """Versions, source, the training sets that read a version of the view and the models trained on it."""
    name = version.name
    versions, ids = [], set()
    for x in catalog.versions(name):
        batches = catalog.batches(x.name, x.version)
        ids |= {b.id for b in batches}
        versions.append({"version": x.version, "hash": x.definition_hash[:12], "created_at": x.created_at,
                         "created_by": x.created_by, "batches": len(batches), "rows": sum(b.row_count for b in batches)})  # fmt: skip
    sets = {}
    for s in catalog.training_sets_using(ids):
        read = sorted({int(v) for r in s["features"] for v in [_version_of(r, name)] if v is not None})
        sets[s["fingerprint"]] = {"fingerprint": s["fingerprint"], "snapshot": s["snapshot"], "rows": s["label_rows"],
                                  "created_at": s["created_at"], "versions": read, "models": []}  # fmt: skip
    models = []
    for mv in console.box.registry.versions():
        info = mv.lineage or {}
        fed = {v for r in (info.get("feature_refs") or {}).values() for v in [_version_of(str(r), name)] if v is not None}
        fed |= {v for r in (info.get("feature_views") or []) for v in [_version_of(f"{r}:", name)] if v is not None}
        via = sets.get(str(info.get("dataset_fingerprint") or ""))
        if not fed and via is None:
            continue
        if via is not None:
            via["models"].append(mv.ref)
        models.append({"model": mv.ref, "versions": sorted(fed | set(via["versions"] if via else ())),
                       "training_set": via["fingerprint"] if via else None, "archived": bool(mv.archived_at)})  # fmt: skip
    return {
        "view": name, "source": version.view.source, "transformation": bool(version.view.transformation),
        "versions": versions, "training_sets": list(sets.values()), "models": models[-MODELS:],
        "models_total": len(models),
    }  # fmt: skip


def _version_of(ref: str, name: str) -> int | None:
    """The version of `name` a "view@version:field" reference reads; None for another view's."""
    view, _, rest = ref.partition("@")
    ver = rest.partition(":")[0]
    return int(ver) if view == name and ver.isdigit() else None
