"""One model version in detail: signature, ONNX parity, the gate its training recorded, lineage, deployments.

Everything comes from meta.db: the version row (metrics, signature, lineage, parity), the run that
trained it (tracking), the training set its dataset fingerprint names (the feature store's catalog),
and the deployments. The gate is the one the training spec declared (kept in the version's lineage
as `spec.gate`), with whether it passed (`metrics.gate_passed`) and the reasons the run was tagged
with (`gate_reasons`); a version trained without a gate has `gate: None`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlbox.errors import MlboxError

if TYPE_CHECKING:
    from mlbox.console.service import Console
    from mlbox.registry.store import ModelVersion

Row = dict[str, Any]


def model_detail(console: Console, ref: str) -> Row:
    """The version `ref` (NAME:N, NAME:staging, NAME:latest...) in full; NotFound when there is none."""
    console._require("models show")
    box = console.box
    v = box.registry.get(ref)
    info = v.lineage or {}
    spec: Row = info["spec"] if isinstance(info.get("spec"), dict) else {}
    run = _run(console, v.run_id or info.get("run_id"))
    served = serving(console, v)
    return {
        "model": v.ref, "flavor": v.flavor, "task": v.task, "aliases": list(v.aliases), "archived": bool(v.archived_at),
        "archived_at": v.archived_at, "created_at": v.created_at, "created_by": v.created_by,
        "metrics": {str(k): _json(x) for k, x in v.metrics.items()},
        "signature": signature(v.signature),
        "onnx": onnx(v),
        "gate": gate(spec.get("gate"), v.metrics, run),
        "lineage": {
            "run": None if run is None else {k: run[k] for k in ("id", "experiment", "name", "status")},
            "dataset_fingerprint": info.get("dataset_fingerprint"),
            "training_set": training_set(console, v),
            "data_path": _data_path(info, spec),
            "feature_views": [str(x) for x in info.get("feature_views") or []],
            "code_rev": info.get("code_rev"), "code_dirty": info.get("code_dirty"),
        },
        "serving": served,
        "deployments": sorted({s["deployment"] for s in served}),
    }  # fmt: skip


def signature(sig: Row) -> Row:
    """Inputs (name, dtype, kind, levels) and the output the task gives (the target: its classes, or a number)."""
    inputs = [
        {"name": str(c["name"]), "dtype": str(c["dtype"]), "kind": str(c.get("kind", "")),
         "levels": len(c.get("levels") or ()), "nullable": bool(c.get("nullable"))}
        for c in sig.get("columns") or []
    ]  # fmt: skip
    classes = [_json(c) for c in sig.get("classes") or []]
    target = str(sig.get("target") or "prediction")
    if sig.get("task") == "classification":
        outputs = [{"name": target, "dtype": f"class of {len(classes)}", "classes": classes},
                   {"name": "probabilities", "dtype": f"float[{len(classes)}]", "classes": classes}]  # fmt: skip
    else:
        outputs = [{"name": target, "dtype": "float64", "classes": []}]
    return {"inputs": inputs, "outputs": outputs}


def onnx(v: ModelVersion) -> Row:
    diff, tol = _json(v.onnx_max_abs_diff), _json(v.onnx_tolerance)
    ok = None if diff is None or tol is None else bool(diff <= tol)
    return {"max_abs_diff": diff, "tolerance": tol, "ok": ok}


def gate(declared: Any, metrics: Row, run: Row | None) -> Row | None:
    """The spec's gate (metric, min, max, must_beat), its metric's value, passed, and the run's reasons; None: no gate."""
    if not isinstance(declared, dict) or not declared.get("metric"):
        return None
    metric = str(declared["metric"])
    passed = metrics.get("gate_passed")
    reasons = str((run or {}).get("tags", {}).get("gate_reasons") or "")
    return {
        "metric": metric, "min": _json(declared.get("min")), "max": _json(declared.get("max")),
        "must_beat": declared.get("must_beat"), "value": _json(metrics.get(metric)),
        "passed": bool(passed) if passed is not None else None, "reasons": reasons,
    }  # fmt: skip


def training_set(console: Console, v: ModelVersion) -> Row | None:
    """The recorded training set the version was trained on: views@versions, label source, snapshot, rows."""
    from mlbox.errors import NotFound
    from mlbox.features.catalog import Catalog

    info = v.lineage or {}
    fingerprint = info.get("dataset_fingerprint")
    if not fingerprint or not info.get("feature_views"):
        return None  # a plain file's fingerprint is its hash: no training set recorded
    try:
        found = Catalog(console.box.db).training_set(str(fingerprint))
    except NotFound:
        return None
    views = sorted({str(r).partition(":")[0] for r in found["features"]})
    return {
        "fingerprint": found["fingerprint"], "views": views, "features": [str(r) for r in found["features"]],
        "labels": str(info.get("data_source") or ""), "snapshot": found["snapshot"], "rows": found["label_rows"],
        "batches": len(found["batches"]), "created_at": found["created_at"], "created_by": found["created_by"],
    }  # fmt: skip


def serving(console: Console, v: ModelVersion) -> list[Row]:
    """Each deployment that serves `v`, and as what (primary, canary with its weight, shadow)."""
    out = []
    for d in console.box.deployments.all():
        for role, model in (("primary", d.primary_model), ("canary", d.canary_model), ("shadow", d.shadow_model)):
            if model and _same(console, str(model), v.ref):
                weight = (100.0 - float(d.canary_weight) if d.canary_model else 100.0) if role == "primary" else (
                    float(d.canary_weight) if role == "canary" else 0.0)  # fmt: skip
                out.append({"deployment": d.name, "as": role, "weight": weight})
    return out


def _same(console: Console, model: str, ref: str) -> bool:
    if model == ref:
        return True
    if model.rpartition(":")[2].isdigit():
        return False
    try:
        return console.box.registry.get(model).ref == ref  # an alias a deployment names
    except MlboxError:
        return False


def _run(console: Console, run_id: Any) -> Row | None:
    if not run_id:
        return None
    try:
        r = console.box.tracking.run(str(run_id))
    except MlboxError:
        return None  # the run was deleted: the version keeps its id in lineage only
    return {"id": r.id, "experiment": r.experiment, "name": r.name, "status": r.status, "tags": dict(r.tags)}


def _data_path(info: Row, spec: Row) -> str | None:
    data: Row = spec["data"] if isinstance(spec.get("data"), dict) else {}
    if data.get("labels"):
        return None
    return str(info.get("data_source") or data.get("path") or "") or None


def _json(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)
