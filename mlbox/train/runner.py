"""`mlbox train`: prepare, load, encode, track, fit and evaluate, gate, save, export, register.

Each phase is one function below and `train` calls them in order, timing each one (the
seconds are tagged on the run as `phase_seconds` and returned, for `mlbox bench train`).
What differs between model families is asked of the flavor (`check_params`,
`total_steps`, `uses_validation`), never decided from its name.

Everything a run does is recorded on its tracking run. Registration happens only after
the model is fitted and evaluated, and is itself atomic, so Ctrl-C leaves a run marked
`interrupted` and never a half-registered version; kill -9 leaves it `running` until the
next open of the tracking store marks it `killed`. Files on their way into the box wait in
a scratch folder inside it, swept if the process dies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlbox.errors import UsageError, ValidationError
from mlbox.features.store import FeatureStore
from mlbox.flavors import get_flavor
from mlbox.flavors.base import Device, FitRequest, FitResult, Flavor
from mlbox.flavors.onnx import check_single_file, run, session
from mlbox.flavors.profile import build_profile
from mlbox.flavors.signature import Signature, reference_stats
from mlbox.registry.store import ALIASES, ModelVersion, Registry
from mlbox.tracking.environment import code_revision, environment
from mlbox.tracking.run import ActiveRun
from mlbox.tracking.store import TrackingStore
from mlbox.train import data as datamod
from mlbox.train.metrics import GateResult, check_gate, evaluate
from mlbox.train.spec import TrainSpec

PARITY_ROWS = 2000
PROFILE_PREDICTION_ROWS = 100_000  # rows of training data the output profile is predicted on
Progress = Callable[[str, int, int | None, Mapping[str, float]], None]  # stage, step, total, metrics


@dataclass
class TrainResult:
    """What one `train` call produced: the run, its metrics, device, gate, version and phase timings."""

    run_id: str
    metrics: dict[str, float]
    device: str
    device_reason: str
    gate: GateResult
    version: ModelVersion | None = None
    promoted: str | None = None
    notes: list[str] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Encoded:
    """The training data as a flavor sees it: the signature, X, y, and the row splits."""

    data: datamod.TrainingData
    signature: Signature
    X: np.ndarray
    y: np.ndarray
    splits: list[datamod.Split]


class PhaseClock:
    """Wall-clock seconds spent in each phase of one `train` call, in the order first entered."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _silent(stage: str, step: int, total: int | None, values: Mapping[str, float]) -> None:
    """The progress callback when nobody watches."""


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
    say, clock = progress or _silent, PhaseClock()
    with clock.phase("prepare"):
        flavor, device, reason = prepare(spec, promote_if_gate)
    with clock.phase("load"):
        say("loading data", 0, None, {})
        data = datamod.load(spec, store, actor)
    with clock.phase("encode"):
        enc = encode(spec, data)
    with clock.phase("track"):
        run_id, provenance = start_run(spec, tracking, actor, data, device)
    # the run's scratch folder lives inside the box, so a killed run's files are swept with the run
    with tracking.artifacts.scratch() as work, ActiveRun(tracking, run_id) as active:
        active.set_tags({"device_reason": reason, "rows": len(data.frame), "features": len(enc.signature.columns)})
        fit, metrics = fit_and_evaluate(flavor, spec, enc, device, active, say, clock)
        with clock.phase("gate"):
            gate = check_gate_phase(spec, registry, metrics, active)
        result = TrainResult(run_id, metrics, fit.device, reason, gate, notes=list(fit.notes))
        with clock.phase("save"):
            files = save_native(flavor, fit.model, work, active)
        if register:
            with clock.phase("export"):
                say("exporting to ONNX", 0, None, {})
                files["model.onnx"], diff, tol = export_onnx(flavor, fit.model, spec, enc, work, active, allow_mismatch)
            with clock.phase("register"):
                say("registering", 0, None, {})
                profile = reference_profile(flavor, fit.model, spec, enc)
                result.version, result.promoted = register_version(
                    spec, registry, enc, files, metrics, gate, run_id, provenance, (diff, tol), actor, promote_if_gate,
                    profile,
                )
        result.phase_seconds = dict(clock.seconds)
        active.set_tag("phase_seconds", {k: round(v, 4) for k, v in clock.seconds.items()})
    return result


def prepare(spec: TrainSpec, promote_if_gate: str | None) -> tuple[Flavor, Device, str]:
    """Refuse a bad alias, device or flavor params before any data is loaded or any run is recorded."""
    if promote_if_gate is not None and promote_if_gate not in ALIASES:
        raise UsageError(f"cannot promote to {promote_if_gate!r}", hint=f"aliases are {', '.join(ALIASES)}")
    flavor = get_flavor(spec.flavor)
    device, reason = resolve_device(spec.device, flavor)
    flavor.check_params(spec.params, task=spec.task, estimator=spec.estimator, seed=spec.seed)  # type: ignore[arg-type]
    return flavor, device, reason


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


def encode(spec: TrainSpec, data: datamod.TrainingData) -> Encoded:
    """Infer the signature, encode features and target to numbers, and split the rows."""
    signature = Signature.infer(data.frame, data.features, spec.target, spec.task)
    X = signature.encode(data.frame)
    y = signature.encode_target(data.frame[spec.target])
    return Encoded(data=data, signature=signature, X=X, y=y, splits=datamod.split(data, spec.split, spec.seed))


def start_run(
    spec: TrainSpec, tracking: TrackingStore, actor: str, data: datamod.TrainingData, device: Device
) -> tuple[str, dict[str, Any]]:
    """Record a `running` run with its params, environment, code revision and dataset; its id and that provenance."""
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
    return run_id, {"code_rev": rev, "code_dirty": dirty, "env_hash": env_hash}


def fit_and_evaluate(
    flavor: Flavor,
    spec: TrainSpec,
    enc: Encoded,
    device: Device,
    active: ActiveRun,
    say: Progress,
    clock: PhaseClock,
) -> tuple[FitResult, dict[str, float]]:
    """Fit each split and score its test rows (k-fold: mean over folds, then a refit on all rows); log the metrics."""
    fold_metrics: list[dict[str, float]] = []
    fit: FitResult | None = None
    for i, part in enumerate(enc.splits):
        final = i == len(enc.splits) - 1
        with clock.phase("fit"):
            fit = fit_split(flavor, spec, enc, part, device, active if final else None, say)
        with clock.phase("evaluate"):
            pred = flavor.predict(fit.model, enc.X[part.test])
            fold_metrics.append(evaluate(spec.task, spec.metrics, enc.y[part.test], pred))
    assert fit is not None
    if spec.split.method == "kfold":
        metrics = {k: float(np.nanmean([m[k] for m in fold_metrics])) for k in fold_metrics[0]}
        say("refitting on all rows", 0, None, {})
        everything = datamod.Split(np.arange(len(enc.y)), None, enc.splits[-1].test)
        with clock.phase("fit"):
            fit = fit_split(flavor, spec, enc, everything, device, None, say)
    else:
        metrics = fold_metrics[0]
    active.log_metrics(metrics)
    active.set(device=fit.device)
    return fit, metrics


def fit_split(
    flavor: Flavor,
    spec: TrainSpec,
    enc: Encoded,
    part: datamod.Split,
    device: Device,
    active: ActiveRun | None,
    say: Progress,
) -> FitResult:
    """One flavor fit on one split's rows, reporting per-step progress (logged on the run when `active`)."""
    total = flavor.total_steps(spec.params)
    if part.valid is not None and not flavor.uses_validation(spec.early_stopping_rounds):
        part = datamod.Split(np.sort(np.concatenate([part.train, part.valid])), None, part.test)  # train on them too

    def on_progress(step: int, values: Mapping[str, float]) -> None:
        if active is not None:
            active.log_metrics(dict(values), step=step)
        say("training", step, total, values)

    X, y = enc.X, enc.y
    return flavor.fit(
        FitRequest(
            task=spec.task,  # type: ignore[arg-type]
            X_train=X[part.train],
            y_train=y[part.train],
            X_valid=None if part.valid is None else X[part.valid],
            y_valid=None if part.valid is None else y[part.valid],
            feature_names=enc.signature.names,
            categorical=enc.signature.categorical,
            n_classes=len(enc.signature.classes),
            params=spec.params,
            seed=spec.seed,
            device=device,
            estimator=spec.estimator,
            preprocess=spec.preprocess,
            early_stopping_rounds=spec.early_stopping_rounds,
            on_progress=on_progress,
        )
    )


def check_gate_phase(spec: TrainSpec, registry: Registry, metrics: dict[str, float], active: ActiveRun) -> GateResult:
    """The spec's gate on these metrics, against the incumbent's when it must beat one; tagged on the run."""
    incumbent = None
    if spec.gate and spec.gate.must_beat:
        holder = registry.holder(spec.model_name, spec.gate.must_beat)
        incumbent = registry.get(f"{spec.model_name}:{holder}").metrics if holder else None
    gate = check_gate(spec.gate, metrics, incumbent)
    active.set_tags({"gate": "passed" if gate.passed else "failed", "gate_reasons": "; ".join(gate.reasons)})
    return gate


def save_native(flavor: Flavor, model: Any, work: Path, active: ActiveRun) -> dict[str, Path]:
    """Write the native artifact(s) into `work/native` and log them on the run; name -> path."""
    (work / "native").mkdir()
    files = {f"native/{p.name}": p for p in flavor.save(model, work / "native")}
    for name, path in files.items():
        active.log_artifact(path, name)
    return files


def export_onnx(
    flavor: Flavor, model: Any, spec: TrainSpec, enc: Encoded, work: Path, active: ActiveRun, allow_mismatch: bool
) -> tuple[Path, float, float]:
    """Export to `work/model.onnx` and compare it with the native model on held-out rows; path, diff, tolerance."""
    onnx_path = work / "model.onnx"
    flavor.to_onnx(model, enc.X.shape[1], spec.task, len(enc.signature.classes), onnx_path)  # type: ignore[arg-type]
    check_single_file(onnx_path)
    diff, tol = parity(flavor, model, onnx_path, enc.X[enc.splits[-1].test[:PARITY_ROWS]], spec.task)
    active.log_metrics({"onnx_max_abs_diff": diff})
    if diff > tol and not allow_mismatch:
        raise ValidationError(
            f"the ONNX export differs from the native model by {diff:.3g} (tolerance {tol:.3g}); not registered",
            hint="rerun with --allow-mismatch to register anyway",
        )
    return onnx_path, diff, tol


def register_version(
    spec: TrainSpec,
    registry: Registry,
    enc: Encoded,
    files: dict[str, Path],
    metrics: dict[str, float],
    gate: GateResult,
    run_id: str,
    provenance: dict[str, Any],
    onnx_diff: tuple[float, float],
    actor: str,
    promote_if_gate: str | None,
    profile: dict[str, Any] | None = None,
) -> tuple[ModelVersion, str | None]:
    """Register the version with its signature, reference stats and lineage; promote it if asked and the gate passed."""
    data, signature = enc.data, enc.signature
    rows = train_rows(spec, enc)
    version = registry.register(
        spec.model_name,
        files=files,
        flavor=spec.flavor,
        task=spec.task,
        signature=signature.as_dict(),
        reference_stats=reference_stats(enc.X[rows], signature),
        metrics={**metrics, "gate_passed": gate.passed},
        lineage={
            "run_id": run_id,
            "dataset_fingerprint": data.fingerprint,
            "feature_views": data.feature_views,
            "feature_refs": {c: data.feature_refs[c] for c in signature.names if c in data.feature_refs},
            "batches": data.batches,
            "snapshot": data.snapshot,
            "purged": data.purged,  # rows retention removed before this set was built (privacy/retention.py)
            "data_source": data.source,
            **provenance,
            "params": dict(spec.params),
            "spec": spec.as_dict(),
            "spec_dir": str(spec.base_dir.resolve()),  # what the spec's relative paths mean (a policy's retrain reads it)
        },
        run_id=run_id,
        onnx_max_abs_diff=onnx_diff[0],
        onnx_tolerance=onnx_diff[1],
        actor=actor,
        profile=profile,
    )
    if promote_if_gate and gate.passed:
        return registry.set_alias(version.ref, promote_if_gate, actor), promote_if_gate
    return version, None


def train_rows(spec: TrainSpec, enc: Encoded) -> np.ndarray:
    """The rows the final model was fitted on (every row for k-fold)."""
    return np.arange(len(enc.y)) if spec.split.method == "kfold" else enc.splits[-1].train


def reference_profile(flavor: Flavor, model: Any, spec: TrainSpec, enc: Encoded) -> dict[str, Any]:
    """Monitoring's baseline: the training rows' profile, the model's outputs on them and its importances."""
    rows = train_rows(spec, enc)
    X = enc.X[rows]
    sample = X[:: max(1, len(X) // PROFILE_PREDICTION_ROWS)]  # outputs from an even sample: predicting 1M rows costs seconds
    weights = flavor.importance(model, X.shape[1])
    importance = None if weights is None else dict(zip(enc.signature.names, weights.tolist(), strict=True))
    return build_profile(X, enc.signature, task=spec.task, predictions=flavor.predict(model, sample), importance=importance)


def parity(flavor: Flavor, model: Any, onnx_path: Path, X: np.ndarray, task: str) -> tuple[float, float]:
    """Max abs difference between ONNX (onnxruntime) and native predictions, and the tolerance."""
    native = np.asarray(flavor.predict(model, X), dtype=np.float64)
    onnx_pred = np.asarray(run(session(onnx_path, providers=["CPUExecutionProvider"]), X), dtype=np.float64)
    if native.shape != onnx_pred.shape:
        onnx_pred = onnx_pred.reshape(native.shape)
    diff = float(np.max(np.abs(native - onnx_pred))) if native.size else 0.0
    tol = 1e-4 if task == "classification" else 1e-4 * max(1.0, float(np.max(np.abs(native))) if native.size else 1.0)
    return diff, tol
