"""Where personal data lives in a box: protected fields and everything derived from them.

Joins the feature store's protected fields (mlbox.features.privacy) with what was made from
them: online tables, recorded training sets, model versions trained on those sets or fed those
fields (registry lineage), their reference profiles' category counts, and the deployments whose
prediction logs hold those inputs. It lists locations, never values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlbox.features.online import table_name
from mlbox.features.privacy import locations, protected

if TYPE_CHECKING:
    from mlbox.box import Box

SECTIONS = ("fields", "online_tables", "training_sets", "models", "profiles", "deployments")


def report(box: Box) -> dict[str, list[dict[str, Any]]]:
    """Every location of protected data, by section (SECTIONS): one row per field, table, set, model,
    profile entry and deployment."""
    fs = box.features
    tables = {}
    for v in fs.catalog.versions():
        name = table_name(v)
        if protected(v) and fs.online.has_table(name):
            tables[name] = fs.online.count(v)
    found = locations(fs.catalog, tables)
    guarded = {f"{r['view']}:{r['field']}" for r in found["fields"]}
    sets = {s["fingerprint"]: s for s in found["training_sets"]}
    models, inputs = [], {}
    for mv in box.registry.versions():
        lineage = mv.lineage or {}
        refs: dict[str, str] = dict(lineage.get("feature_refs") or {})  # column -> view@version:field
        fed = {c: r for c, r in refs.items() if r in guarded}
        via = sets.get(str(lineage.get("dataset_fingerprint") or ""))
        if not fed and via is None:
            continue
        inputs[mv.ref] = fed
        models.append(
            {
                "model": mv.ref,
                "training_set": via["fingerprint"] if via else None,
                "fields": sorted(set(fed.values()) | set(via["fields"] if via else ())),
                "inputs": sorted(fed),
                "archived": bool(mv.archived_at),
            }
        )
    return {
        **found,
        "models": models,
        "profiles": _profiles(box, inputs),
        "deployments": _deployments(box, inputs),
    }


def _profiles(box: Box, inputs: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Reference profile entries that keep category counts of a protected categorical input."""
    rows = []
    for ref, fed in inputs.items():
        if not fed:
            continue
        profile = box.registry.profile(ref)
        entries = (profile or {}).get("features") or {}
        for column, field in sorted(fed.items()):
            entry = entries.get(column) or {}
            if entry.get("kind") == "categorical":
                rows.append({"model": ref, "column": column, "field": field, "levels": len(entry.get("levels") or {})})
    return rows


def _deployments(box: Box, inputs: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Deployments serving a flagged model; their prediction logs hold its protected inputs."""
    rows = []
    for d in box.deployments.all():
        for role, ref in (("primary", d.primary_model), ("canary", d.canary_model), ("shadow", d.shadow_model)):
            if ref is None or ref not in inputs:
                continue
            log = box.paths.predictions / d.name
            rows.append(
                {
                    "deployment": d.name,
                    "model": ref,
                    "role": role,
                    "logged_inputs": sorted(inputs[ref]),
                    "prediction_log": str(log.relative_to(box.paths.home)),
                    "log_files": sum(1 for _ in log.rglob("*.parquet")) if log.is_dir() else 0,
                }
            )
    return rows
