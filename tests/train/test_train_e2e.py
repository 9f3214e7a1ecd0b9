"""`mlbox train` end to end from the feature store: each flavor fits, exports, registers, and is tracked.

Also the lineage from a registered version back to the exact feature batches, the regression
template, and k-fold evaluation.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlbox.flavors import get_flavor
from mlbox.flavors.onnx import run, session
from mlbox.flavors.signature import Signature
from mlbox.registry.store import ModelVersion
from mlbox.store.artifacts import file_sha256
from mlbox.tracking.environment import environment
from mlbox.train import runner
from mlbox.train.metrics import evaluate as real_evaluate
from mlbox.train.spec import load_spec, parse_spec

from ..conftest import OS_USER
from .conftest import FAST_PARAMS, Project

NATIVE_FILES = {
    "sklearn": {"native/model.joblib"},
    "xgboost": {"native/model.ubj"},
    "torch": {"native/model.pt", "native/config.json"},
}


def training_frame(project: Project, version: ModelVersion) -> pd.DataFrame:
    """The point-in-time frame the version was trained on, rebuilt from its lineage."""
    spec = version.lineage["spec"]
    data = spec["data"]
    ts = project.box.features.training_set(
        project.home / data["labels"], data["features"], version.lineage["snapshot"], timestamp=data["timestamp"]
    )
    assert ts.fingerprint == version.lineage["dataset_fingerprint"]
    return ts.frame


def native_and_onnx(project: Project, version: ModelVersion, frame: pd.DataFrame, tmp_path: Path) -> tuple[Any, np.ndarray, np.ndarray]:
    """(native model, native predictions, ONNX predictions) of a registered version on `frame`."""
    X = Signature.from_dict(version.signature).encode(frame)
    flavor = get_flavor(version.flavor)
    model = flavor.load(project.box.registry.local_files(version.ref, tmp_path / "native"))
    onnx_file = project.box.registry.export(version.ref, "onnx", tmp_path / "model.onnx")[0]
    onnx_pred = run(session(onnx_file, threads=1, providers=["CPUExecutionProvider"]), X)
    return model, np.asarray(flavor.predict(model, X)), np.asarray(onnx_pred)


# Why `device: auto` falls back to the CPU here (PATH holds no nvidia-smi: tests/conftest.py).
FALLBACK_REASONS = {
    "sklearn": r"scikit-learn trains on CPU only",
    "xgboost": r"no NVIDIA GPU: nvidia-smi not found",
    "torch": r"torch \S+ was built without CUDA|torch sees no CUDA device",
}


@pytest.mark.parametrize("flavor", ["sklearn", "xgboost", "torch"])
def test_each_flavor_trains_registers_and_is_tracked(churn: Project, tmp_path: Path, flavor: str) -> None:
    if flavor == "torch":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this test checks the CPU fallback")
    extra: dict[str, Any] = {"gate": {"metric": "roc_auc", "min": 0.5}, "device": "auto"}
    if flavor == "sklearn":
        extra |= {"estimator": "sklearn.ensemble.HistGradientBoostingClassifier", "preprocess": True}
    result = churn.train(churn.fast_spec(flavor=flavor, **extra), register=True)

    # the registered version: native + ONNX files, each stored once by sha256
    v = result.version
    assert v is not None and v.ref == "churn:1" and v.flavor == flavor and v.task == "classification"
    assert set(v.artifacts) == {"model.onnx", *NATIVE_FILES[flavor]}
    for meta in v.artifacts.values():
        assert file_sha256(churn.box.artifacts.path(meta["sha256"])) == meta["sha256"]
    tolerance = v.onnx_tolerance
    assert tolerance is not None and tolerance == pytest.approx(1e-4)
    assert v.onnx_max_abs_diff is not None and v.onnx_max_abs_diff <= tolerance
    assert v.metrics == {**result.metrics, "gate_passed": True}
    assert set(result.metrics) == {"roc_auc", "accuracy", "log_loss"} and result.metrics["roc_auc"] > 0.5
    assert [c["name"] for c in v.signature["columns"]] == [
        "age", "plan", "region", "monthly_charges", "calls", "data_gb", "support_tickets", "late_payments", "tickets_per_call",
    ]  # fmt: skip
    plan = next(c for c in v.signature["columns"] if c["name"] == "plan")
    assert plan["kind"] == "categorical" and plan["levels"] and v.signature["classes"] == [0, 1]
    assert set(v.reference_stats["features"]) == {c["name"] for c in v.signature["columns"]}

    # ONNX through onnxruntime matches the native model on every row, encoded by the stored signature
    frame = training_frame(churn, v)
    model, native, onnx_pred = native_and_onnx(churn, v, frame, tmp_path)
    assert native.shape == onnx_pred.shape == (len(frame), 2)
    assert float(np.max(np.abs(native - onnx_pred))) <= tolerance
    if flavor == "sklearn":
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline

        assert isinstance(model, Pipeline) and isinstance(model.steps[0][1], ColumnTransformer)

    # the run
    info = churn.box.tracking.run(result.run_id)
    assert v.run_id == info.id == v.lineage["run_id"]
    assert info.status == "finished" and info.error is None and info.duration_s is not None
    assert info.experiment == "churn" and info.user == OS_USER
    assert info.device == result.device == "cpu"
    reason = info.tags["device_reason"]
    assert reason == result.device_reason and reason.startswith("auto: falling back to CPU (")
    assert re.search(FALLBACK_REASONS[flavor], reason), reason
    assert reason == f"auto: falling back to CPU ({get_flavor(flavor).cuda_available()[1]})"
    assert info.tags["gate"] == "passed" and info.tags["flavor"] == flavor and info.tags["split"] == "time"
    assert info.tags["rows"] == len(frame) == 4000
    assert info.params["seed"] == 42 and info.params["flavor"] == flavor
    assert all(info.params[k] == val for k, val in FAST_PARAMS[flavor].items())
    assert info.dataset_fingerprint == v.lineage["dataset_fingerprint"]
    assert info.feature_views == v.lineage["feature_views"] == ["customer_profile@1", "usage@1"]
    assert info.env_hash == v.lineage["env_hash"] == environment()[1]
    assert info.environment["packages"]["mlbox"] and info.environment["python"]
    logged = churn.box.tracking.latest_metrics([info.id])[info.id]
    for key, value in result.metrics.items():
        assert logged[key] == pytest.approx(value)
    assert logged["onnx_max_abs_diff"] == pytest.approx(v.onnx_max_abs_diff)
    artifacts = {a["name"]: a["sha256"] for a in churn.box.tracking.run_artifacts(info.id)}
    assert artifacts == {name: v.artifacts[name]["sha256"] for name in NATIVE_FILES[flavor]}
    if flavor != "sklearn":
        history = churn.box.tracking.metric_history(info.id, "train_loss")
        steps = [step for step, _ in history]
        assert len(steps) >= 3 and steps == sorted(set(steps))
        assert steps[-1] <= FAST_PARAMS[flavor]["n_estimators" if flavor == "xgboost" else "epochs"]
        assert len(churn.box.tracking.metric_history(info.id, "valid_loss")) == len(history)


def test_lineage_resolves_to_the_exact_feature_batches(churn: Project) -> None:
    fs = churn.box.features
    spec = churn.fast_spec()
    v1 = churn.train(spec, register=True).version
    assert v1 is not None
    recorded = fs.catalog.training_set(v1.lineage["dataset_fingerprint"])
    assert v1.lineage["batches"] == recorded["batches"]
    views = [ref.split("@") for ref in v1.lineage["feature_views"]]
    expected = sorted(b.id for name, version in views for b in fs.catalog.batches(name, int(version)))
    assert sorted(v1.lineage["batches"]) == expected and len(expected) == 2
    assert v1.lineage["snapshot"] == recorded["snapshot"]
    assert v1.lineage["data_source"] == "data/labels.csv"

    # a later usage batch: retraining sees a different training set that includes it
    usage = pd.read_csv(churn.home / "data" / "usage.csv")
    later = usage[usage["event_ts"] == usage["event_ts"].max()].copy()
    later["event_ts"] = "2026-02-01T00:00:00Z"
    later.to_csv(churn.home / "later.csv", index=False)
    new_batch = fs.ingest("usage", churn.home / "later.csv", actor=OS_USER).batch.id
    assert new_batch not in expected

    v2 = churn.train(spec, register=True).version
    assert v2 is not None
    assert v2.lineage["dataset_fingerprint"] != v1.lineage["dataset_fingerprint"]
    assert sorted(v2.lineage["batches"]) == sorted([*expected, new_batch])
    assert fs.catalog.training_set(v2.lineage["dataset_fingerprint"])["batches"] == v2.lineage["batches"]
    assert v2.lineage["snapshot"] > v1.lineage["snapshot"]
    # the first version still resolves to what it was trained on
    assert fs.catalog.training_set(v1.lineage["dataset_fingerprint"])["batches"] == v1.lineage["batches"]
    # and pinning the snapshot reproduces its training set exactly
    pinned = churn.spec("pinned.yaml", params=FAST_PARAMS["xgboost"],
                        data={**yaml.safe_load(spec.read_text())["data"], "snapshot": v1.lineage["snapshot"]})  # fmt: skip
    again = churn.train(pinned)
    assert churn.box.tracking.run(again.run_id).dataset_fingerprint == v1.lineage["dataset_fingerprint"]


def test_lineage_holds_the_whole_spec(churn: Project) -> None:
    """docs/training.md: lineage holds the whole spec; parsing it back gives the spec that was trained."""
    path = churn.fast_spec(gate={"metric": "roc_auc", "min": 0.5, "must_beat": "production"}, model="churn_model", name="nightly")
    spec = load_spec(path)
    v = churn.train(spec, register=True).version
    assert v is not None and v.name == "churn_model"
    again = parse_spec(v.lineage["spec"], base_dir=spec.base_dir)
    assert dataclasses.replace(again, base_dir=spec.base_dir) == spec


def test_regression_template_trains_registers_and_passes_its_gate(houses: Project, tmp_path: Path) -> None:
    """`mlbox init --template regression` then `mlbox train train.yaml --register`, the template's spec as is."""
    spec = load_spec(houses.home / "train.yaml")
    assert (spec.flavor, spec.estimator, spec.task) == ("sklearn", "sklearn.ensemble.HistGradientBoostingRegressor", "regression")
    result = houses.train(spec, register=True)
    v = result.version
    assert v is not None and v.ref == "house_prices:1" and v.task == "regression"
    assert set(result.metrics) == {"rmse", "mae", "r2"}
    assert set(v.artifacts) == {"model.onnx", "native/model.joblib"}
    assert v.lineage["feature_views"] == ["listings@1", "market@1"]
    # regression tolerance scales with the size of the predictions (prices in AED)
    frame = training_frame(houses, v)
    _, native, onnx_pred = native_and_onnx(houses, v, frame, tmp_path)
    assert native.shape == onnx_pred.shape == (len(frame),)
    assert v.onnx_tolerance is not None and v.onnx_tolerance > 1e-4
    assert v.onnx_tolerance >= 1e-4 * 0.5 * float(np.max(np.abs(native)))
    assert v.onnx_max_abs_diff is not None and v.onnx_max_abs_diff <= v.onnx_tolerance
    assert float(np.max(np.abs(native - onnx_pred))) <= v.onnx_tolerance
    # the template's own gate (r2 >= 0.7) holds for the template's own data and spec
    assert houses.box.tracking.run(result.run_id).tags["gate"] == ("passed" if result.gate.passed else "failed")
    assert result.gate.passed, result.gate.reasons


def test_kfold_reports_the_fold_mean_and_refits_on_every_row(
    houses: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlbox.flavors.sklearn import SklearnFlavor

    fits: list[tuple[int, Any]] = []
    folds: list[dict[str, float]] = []
    real_fit = SklearnFlavor.fit

    def spy_fit(self: SklearnFlavor, request: Any) -> Any:
        result = real_fit(self, request)
        fits.append((len(request.X_train), result.model))
        return result

    def spy_evaluate(*args: Any) -> dict[str, float]:
        folds.append(real_evaluate(*args))
        return folds[-1]

    monkeypatch.setattr(SklearnFlavor, "fit", spy_fit)
    monkeypatch.setattr(runner, "evaluate", spy_evaluate)
    path = houses.spec("kfold.yaml", params={"max_iter": 30, "learning_rate": 0.3},
                       split={"method": "kfold", "folds": 3, "valid_size": 0})  # fmt: skip
    result = houses.train(path, register=True)

    n = houses.box.tracking.run(result.run_id).tags["rows"]
    assert n == 3000
    sizes = [len(part) for part in np.array_split(np.arange(n), 3)]
    assert [size for size, _ in fits] == [n - s for s in sizes] + [n]  # three folds, then every row
    assert len(folds) == 3 and len({f["rmse"] for f in folds}) == 3
    for key in ("rmse", "mae", "r2"):
        assert result.metrics[key] == pytest.approx(np.mean([f[key] for f in folds]))
    assert houses.box.tracking.run(result.run_id).tags["split"] == "kfold"
    # the registered model is the refit on every row
    v = result.version
    assert v is not None
    frame = training_frame(houses, v)
    X = Signature.from_dict(v.signature).encode(frame)
    flavor = get_flavor("sklearn")
    registered = flavor.load(houses.box.registry.local_files(v.ref, tmp_path / "native"))
    np.testing.assert_array_equal(flavor.predict(registered, X), flavor.predict(fits[-1][1], X))
    assert not np.array_equal(flavor.predict(fits[0][1], X), flavor.predict(fits[-1][1], X))


def test_validation_rows_are_trained_on_when_nothing_early_stops(houses: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """The validation part exists to drive early stopping (docs/training.md, Splits).

    An sklearn spec without early_stopping_rounds never stops early, so holding those rows out
    only throws away the latest 15% of the training rows: on the regression template that costs
    r2 0.64 → 0.37 on the time-split holdout.
    """
    from mlbox.flavors.sklearn import SklearnFlavor

    seen: list[tuple[int, int]] = []
    real_fit = SklearnFlavor.fit

    def spy_fit(self: SklearnFlavor, request: Any) -> Any:
        seen.append((len(request.X_train), 0 if request.X_valid is None else len(request.X_valid)))
        return real_fit(self, request)

    monkeypatch.setattr(SklearnFlavor, "fit", spy_fit)
    path = houses.spec("ridge.yaml", estimator="sklearn.linear_model.Ridge", preprocess=True, params={})
    spec = load_spec(path)
    assert spec.early_stopping_rounds is None and spec.split.valid_size > 0
    houses.train(spec)
    test_rows = round(3000 * spec.split.test_size)
    assert seen and seen[0][0] == 3000 - test_rows, f"trained on {seen[0][0]} of {3000 - test_rows} non-test rows"
