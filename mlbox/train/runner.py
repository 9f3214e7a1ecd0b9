"""`mlbox train`: load data, split, fit on CUDA or CPU, evaluate, track, gate, register, promote.

Everything a run does is recorded on its tracking run. Registration happens only after
the model is fitted and evaluated, and is itself atomic, so Ctrl-C leaves a run marked
`interrupted` and never a half-registered version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlbox.errors import UsageError, ValidationError
from mlbox.features.store import FeatureStore
from mlbox.flavors import get_flavor
from mlbox.flavors.base import Device, FitRequest, FitResult, Flavor
from mlbox.flavors.onnx import check_single_file, run, session
from mlbox.flavors.signature import Signature, reference_stats
from mlbox.registry.store import ALIASES, ModelVersion, Registry
from mlbox.tracking.environment import code_revision, environment
from mlbox.tracking.run import ActiveRun
from mlbox.tracking.store import TrackingStore
from mlbox.train import data as datamod
from mlbox.train.metrics import GateResult, check_gate, evaluate
from mlbox.train.spec import TrainSpec

PARITY_ROWS = 2000
Progress = Callable[[str, int, int | None, Mapping[str, float]], None]  # stage, step, total, metrics


@dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]
    device: str
    device_reason: str
    gate: GateResult
    version: ModelVersion | None = None
    promoted: str | None = None
    notes: list[str] = field(default_factory=list)


def resolve_device(wanted: str, flavor: Flavor) -> tuple[Device, str]:
    """`auto` → CUDA when the flavor can use a GPU here, else CPU, with the reason either way."""
    if wanted == "cpu":
        return "cpu", "device: cpu in the spec"
    ok, why = flavor.cuda_available()
    if wanted == "cuda":
        if not ok:
            raise UsageError(f"device: cuda was asked for, but {why}", hint="use device: auto or cpu")
        return "cuda", "device: cuda in the spec"
    if ok:
        return "cuda", "auto: a GPU is available"
    return "cpu", f"auto: falling back to CPU ({why})"


def _total_steps(spec: TrainSpec) -> int | None:
    if spec.flavor == "xgboost":
        return int(spec.params.get("n_estimators", 200))
    if spec.flavor == "torch":
        return int(spec.params.get("epochs", 50))
    return None


def train(
    spec: TrainSpec,
    *,
    store: FeatureStore | None,
    tracking: TrackingStore,
    registry: Registry,
    actor: str,
    register: bool = False,
    allow_mismatch: bool = False,
    promote_if_gate: str | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Run one training spec end to end; see the module docstring."""
    say = progress or (lambda *_a: None)
    if promote_if_gate is not None and promote_if_gate not in ALIASES:
        raise UsageError(f"cannot promote to {promote_if_gate!r}", hint=f"aliases are {', '.join(ALIASES)}")
    flavor = get_flavor(spec.flavor)
    device, reason = resolve_device(spec.device, flavor)
    check_params(spec)
    say("loading data", 0, None, {})
    data = datamod.load(spec, store, actor)
    signature = Signature.infer(data.frame, data.features, spec.target, spec.task)
    X = signature.encode(data.frame)
    y = signature.encode_target(data.frame[spec.target])
    splits = datamod.split(data, spec.split, spec.seed)
    env, env_hash = environment()
    rev, dirty = code_revision(spec.base_dir)
    run_id = tracking.create_run(
        spec.experiment,
        spec.name,
        actor,
        params={**spec.params, "flavor": spec.flavor, "estimator": spec.estimator, "seed": spec.seed},
        tags={"task": spec.task, "flavor": spec.flavor, "split": spec.split.method},
        environment=env,
        env_hash=env_hash,
        code_rev=rev,
        code_dirty=dirty,
        dataset_fingerprint=data.fingerprint,
        feature_views=data.feature_views,
        device=device,
    )
    with ActiveRun(tracking, run_id) as active:
        active.set_tags({"device_reason": reason, "rows": len(data.frame), "features": len(signature.columns)})
        fold_metrics: list[dict[str, float]] = []
        fit: FitResult | None = None
        for i, part in enumerate(splits):
            final = i == len(splits) - 1
            fit = _fit(flavor, spec, signature, X, y, part, device, active if final else None, say)
            pred = flavor.predict(fit.model, X[part.test])
            fold_metrics.append(evaluate(spec.task, spec.metrics, y[part.test], pred))
        assert fit is not None
        if spec.split.method == "kfold":
            metrics = {k: float(np.nanmean([m[k] for m in fold_metrics])) for k in fold_metrics[0]}
            say("refitting on all rows", 0, None, {})
            everything = datamod.Split(np.arange(len(y)), None, splits[-1].test)
            fit = _fit(flavor, spec, signature, X, y, everything, device, None, say)
        else:
            metrics = fold_metrics[0]
        active.log_metrics(metrics)
        active.set(device=fit.device)
        incumbent = None
        if spec.gate and spec.gate.must_beat:
            holder = registry.holder(spec.model_name, spec.gate.must_beat)
            incumbent = registry.get(f"{spec.model_name}:{holder}").metrics if holder else None
        gate = check_gate(spec.gate, metrics, incumbent)
        active.set_tags({"gate": "passed" if gate.passed else "failed", "gate_reasons": "; ".join(gate.reasons)})
        result = TrainResult(run_id, metrics, fit.device, reason, gate, notes=list(fit.notes))
        with tempfile.TemporaryDirectory(prefix="mlbox-train-") as tmp:
            work = Path(tmp)
            (work / "native").mkdir()
            files = {f"native/{p.name}": p for p in flavor.save(fit.model, work / "native")}
            for name, path in files.items():
                active.log_artifact(path, name)
            if register:
                say("exporting to ONNX", 0, None, {})
                held_out = splits[-1].test[:PARITY_ROWS]
                onnx_path = work / "model.onnx"
                flavor.to_onnx(fit.model, X.shape[1], spec.task, len(signature.classes), onnx_path)  # type: ignore[arg-type]
                check_single_file(onnx_path)
                diff, tol = parity(flavor, fit.model, onnx_path, X[held_out], spec.task)
                active.log_metrics({"onnx_max_abs_diff": diff})
                if diff > tol and not allow_mismatch:
                    raise ValidationError(
                        f"the ONNX export differs from the native model by {diff:.3g} (tolerance {tol:.3g}); not registered",
                        hint="rerun with --allow-mismatch to register anyway",
                    )
                files["model.onnx"] = onnx_path
                say("registering", 0, None, {})
                train_rows = np.arange(len(y)) if spec.split.method == "kfold" else splits[-1].train
                result.version = registry.register(
                    spec.model_name,
                    files=files,
                    flavor=spec.flavor,
                    task=spec.task,
                    signature=signature.as_dict(),
                    reference_stats=reference_stats(X[train_rows], signature),
                    metrics={**metrics, "gate_passed": gate.passed},
                    lineage={
                        "run_id": run_id,
                        "dataset_fingerprint": data.fingerprint,
                        "feature_views": data.feature_views,
                        "feature_refs": {c: data.feature_refs[c] for c in signature.names if c in data.feature_refs},
                        "batches": data.batches,
                        "snapshot": data.snapshot,
                        "data_source": data.source,
                        "code_rev": rev,
                        "code_dirty": dirty,
                        "env_hash": env_hash,
                        "params": dict(spec.params),
                        "spec": spec.as_dict(),
                    },
                    run_id=run_id,
                    onnx_max_abs_diff=diff,
                    onnx_tolerance=tol,
                    actor=actor,
                )
                if promote_if_gate and gate.passed:
                    result.version = registry.set_alias(result.version.ref, promote_if_gate, actor)
                    result.promoted = promote_if_gate
    return result


def check_params(spec: TrainSpec) -> None:
    """Refuse bad flavor params before any data is loaded or any run is recorded."""
    if spec.flavor == "sklearn":
        from mlbox.flavors.sklearn import DEFAULT_ESTIMATORS, build_estimator

        build_estimator(spec.estimator or DEFAULT_ESTIMATORS[spec.task], spec.task, spec.params)  # type: ignore[arg-type]
    elif spec.flavor == "xgboost":
        from mlbox.flavors.xgboost import booster_params

        empty = np.zeros((0, 1), dtype=np.float32)
        booster_params(FitRequest(spec.task, empty, empty, None, None, (), {}, 2, spec.params, spec.seed, "cpu"))  # type: ignore[arg-type]
    elif spec.flavor == "torch":
        from mlbox.flavors.torch import _checked

        _checked(spec.params)


def uses_validation(spec: TrainSpec) -> bool:
    """xgboost and torch early-stop on the validation rows; sklearn only when asked to."""
    return spec.flavor in ("xgboost", "torch") or spec.early_stopping_rounds is not None


def _fit(
    flavor: Flavor,
    spec: TrainSpec,
    signature: Signature,
    X: np.ndarray,
    y: np.ndarray,
    part: datamod.Split,
    device: Device,
    active: ActiveRun | None,
    say: Progress,
) -> FitResult:
    total = _total_steps(spec)
    if part.valid is not None and not uses_validation(spec):  # nothing early-stops: train on those rows too
        part = datamod.Split(np.sort(np.concatenate([part.train, part.valid])), None, part.test)

    def on_progress(step: int, values: Mapping[str, float]) -> None:
        if active is not None:
            active.log_metrics(dict(values), step=step)
        say("training", step, total, values)

    return flavor.fit(
        FitRequest(
            task=spec.task,  # type: ignore[arg-type]
            X_train=X[part.train],
            y_train=y[part.train],
            X_valid=None if part.valid is None else X[part.valid],
            y_valid=None if part.valid is None else y[part.valid],
            feature_names=signature.names,
            categorical=signature.categorical,
            n_classes=len(signature.classes),
            params=spec.params,
            seed=spec.seed,
            device=device,
            estimator=spec.estimator,
            preprocess=spec.preprocess,
            early_stopping_rounds=spec.early_stopping_rounds,
            on_progress=on_progress,
        )
    )


def parity(flavor: Flavor, model: Any, onnx_path: Path, X: np.ndarray, task: str) -> tuple[float, float]:
    """Max abs difference between ONNX (onnxruntime) and native predictions, and the tolerance."""
    native = np.asarray(flavor.predict(model, X), dtype=np.float64)
    onnx_pred = np.asarray(run(session(onnx_path, providers=["CPUExecutionProvider"]), X), dtype=np.float64)
    if native.shape != onnx_pred.shape:
        onnx_pred = onnx_pred.reshape(native.shape)
    diff = float(np.max(np.abs(native - onnx_pred))) if native.size else 0.0
    tol = 1e-4 if task == "classification" else 1e-4 * max(1.0, float(np.max(np.abs(native))) if native.size else 1.0)
    return diff, tol
