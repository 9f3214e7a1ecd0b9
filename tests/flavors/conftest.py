"""Synthetic tabular data and ONNX helpers shared by the flavor tests.

Every dataset has three numeric columns and one categorical column (3 levels), all with
about 10% NaN, encoded as `Signature.encode` would: float32, categorical codes 0..2.
Rows 0-399 train, 400-499 validate, 500-599 are the holdout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from mlbox.flavors.base import FitRequest, FitResult, Flavor, Task

KINDS = ("binary", "multiclass", "regression")
FEATURES = ("x0", "x1", "x2", "colour")
CATEGORICAL = {3: 3}


@dataclass(frozen=True)
class Data:
    task: Task
    X: np.ndarray
    y: np.ndarray
    n_classes: int

    def request(self, **changes: Any) -> FitRequest:
        base = FitRequest(
            task=self.task,
            X_train=self.X[:400],
            y_train=self.y[:400],
            X_valid=self.X[400:500],
            y_valid=self.y[400:500],
            feature_names=FEATURES,
            categorical=CATEGORICAL,
            n_classes=self.n_classes,
            params={},
            seed=0,
            device="cpu",
        )
        return replace(base, **changes)

    @property
    def X_test(self) -> np.ndarray:
        return self.X[500:]

    @property
    def y_test(self) -> np.ndarray:
        return self.y[500:]


def make_data(kind: str, seed: int = 0, n: int = 600, noise: float = 0.3) -> Data:
    rng = np.random.default_rng(seed)
    clean = rng.normal(size=(n, 4)).astype(np.float32)
    clean[:, 2] = np.round(clean[:, 2] * 2)  # repeated values, like counts
    clean[:, 3] = rng.integers(0, 3, n)
    X = clean.copy()
    X[rng.random((n, 4)) < 0.1] = np.nan
    x0, x1, colour = np.nan_to_num(X[:, 0]), clean[:, 1], clean[:, 3]
    if kind == "binary":
        score = x0 + 1.5 * (colour == 1) - 0.5 * x1 + noise * rng.normal(size=n)
        return Data("classification", X, (score > 0.5).astype(np.int64), 2)
    if kind == "multiclass":
        scores = np.stack([2 * x0, -2 * x0, 2 * (colour == 2) + x1], axis=1) + noise * rng.normal(size=(n, 3))
        return Data("classification", X, scores.argmax(axis=1).astype(np.int64), 3)
    target = 3 * x0 - 2 * x1 + 2 * (colour == 1) + 0.5 * clean[:, 2] + noise * rng.normal(size=n)
    return Data("regression", X, target.astype(np.float64), 0)


Progress = list[tuple[int, dict[str, float]]]


def fit_recording(flavor: Flavor, kind: str, params: dict[str, Any]) -> tuple[Data, FitResult, Progress]:
    """Fit `flavor` on data of `kind`, recording every progress callback as (step, metrics)."""
    data = make_data(kind)
    calls: Progress = []
    result = flavor.fit(data.request(params=params, on_progress=lambda step, m: calls.append((step, dict(m)))))
    return data, result, calls


def assert_beats_constant(data: Data, predicted: np.ndarray) -> None:
    """Holdout predictions clearly better than predicting the training distribution/mean."""
    if data.task == "classification":
        assert predicted.shape == (len(data.y_test), data.n_classes)
        np.testing.assert_allclose(predicted.sum(axis=1), 1.0, rtol=1e-5)
        prior = np.bincount(data.y[:400], minlength=data.n_classes) / 400
        rows = np.arange(len(data.y_test))
        model_loss = -np.log(np.clip(predicted[rows, data.y_test], 1e-7, 1)).mean()
        constant_loss = -np.log(prior[data.y_test]).mean()
        assert model_loss < 0.8 * constant_loss, (model_loss, constant_loss)
        assert (predicted.argmax(axis=1) == data.y_test).mean() > np.bincount(data.y_test).max() / len(data.y_test)
    else:
        assert predicted.shape == (len(data.y_test),)
        model_mse = ((predicted - data.y_test) ** 2).mean()
        constant_mse = ((data.y[:400].mean() - data.y_test) ** 2).mean()
        assert model_mse < 0.5 * constant_mse, (model_mse, constant_mse)


def onnx_predict(path: Path, X: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    (out,) = session.run(None, {"input": np.asarray(X, dtype=np.float32)})
    return np.asarray(out)


def assert_single_file(path: Path) -> None:
    """The ONNX model is one file: no tensor stored outside it, nothing written beside it."""
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
    assert not [t.name for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    onnx.checker.check_model(model)


def assert_onnx_matches(
    flavor: Flavor, model: Any, data: Data, directory: Path, X: np.ndarray | None = None
) -> float:
    """Export, run with onnxruntime on X (the holdout) and on one row, compare with native predict; the max abs diff."""
    X = data.X_test if X is None else X
    directory.mkdir()
    path = directory / "model.onnx"
    flavor.to_onnx(model, data.X.shape[1], data.task, data.n_classes, path)
    assert_single_file(path)
    native = flavor.predict(model, X)
    out = onnx_predict(path, X)
    if data.task == "classification":
        assert out.shape == (len(X), data.n_classes)
        diff = float(np.abs(out - native).max())
        assert diff < 1e-4
    else:
        assert out.shape == (len(X), 1)
        diff = float(np.abs(out[:, 0] - native).max())
        np.testing.assert_allclose(out[:, 0], native, rtol=1e-3, atol=1e-3 * np.abs(native).max())
    one = onnx_predict(path, X[:1]).reshape(-1)
    np.testing.assert_allclose(one, native[:1].reshape(-1), rtol=1e-3, atol=1e-4)
    return diff


def saved_and_loaded(flavor: Flavor, model: Any, directory: Path) -> tuple[list[str], Any]:
    directory.mkdir()
    written = flavor.save(model, directory)
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in written)
    return sorted(p.name for p in written), flavor.load(directory)
