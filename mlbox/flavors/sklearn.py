"""scikit-learn flavor: `sklearn.*` estimators, an optional preprocessing Pipeline, joblib artifacts, skl2onnx export."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import log_loss, mean_squared_error
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlbox.errors import UsageError
from mlbox.flavors.base import FitRequest, FitResult, Task, normalised

ARTIFACT = "model.joblib"
DEFAULT_ESTIMATORS: dict[str, str] = {
    "classification": "sklearn.ensemble.HistGradientBoostingClassifier",
    "regression": "sklearn.ensemble.HistGradientBoostingRegressor",
}


class SklearnFlavor:
    """Any scikit-learn estimator class, named by its import path under `sklearn.`."""

    name = "sklearn"

    def check_params(self, params: Mapping[str, Any], *, task: Task, estimator: str | None, seed: int) -> None:
        """Build the estimator once: refuses paths outside `sklearn.`, wrong task and unknown params."""
        build_estimator(estimator or DEFAULT_ESTIMATORS[task], task, params)

    def total_steps(self, params: Mapping[str, Any]) -> int | None:
        """Unknown: an estimator reports one step, when its fit ends."""
        return None

    def uses_validation(self, early_stopping_rounds: int | None) -> bool:
        """Only when early stopping is asked for; otherwise the validation rows are trained on."""
        return early_stopping_rounds is not None

    def fit(self, request: FitRequest) -> FitResult:
        path = request.estimator or DEFAULT_ESTIMATORS[request.task]
        estimator = build_estimator(path, request.task, request.params)
        if "random_state" in estimator.get_params() and "random_state" not in request.params:
            estimator.set_params(random_state=request.seed)
        if request.task == "classification":
            present = np.unique(request.y_train)
            if not np.array_equal(present, np.arange(request.n_classes)):
                raise UsageError(
                    f"the training rows hold classes {present.tolist()}, not all of 0..{request.n_classes - 1}",
                    hint="scikit-learn classifiers only learn the classes they see",
                )
        X = np.asarray(request.X_train, dtype=np.float32)
        X_valid = None if request.X_valid is None else np.asarray(request.X_valid, dtype=np.float32)
        prep = None
        if request.preprocess:
            prep = fit_preprocessor(X, request.categorical)
            X = prep.transform(X)
            X_valid = None if X_valid is None else prep.transform(X_valid)
        fit_kwargs = _early_stopping(estimator, request, X_valid)
        try:
            estimator.fit(X, request.y_train, **fit_kwargs)
        except (ValueError, TypeError) as exc:  # sklearn's InvalidParameterError is both
            hint = "use preprocess=True to impute missing values" if "NaN" in str(exc) else None
            raise UsageError(f"{path} failed to fit: {exc}", hint=hint) from exc
        model: Any = estimator if prep is None else Pipeline([("prep", prep), ("model", estimator)])

        history = {key: [value] for key, value in self._losses(model, request).items()}
        steps = _iterations(estimator)
        if request.on_progress is not None:
            request.on_progress(steps, {key: values[-1] for key, values in history.items()})
        notes = ["scikit-learn has no CUDA support: trained on cpu"] if request.device == "cuda" else []
        return FitResult(model=model, device="cpu", steps=steps, history=history, notes=notes)

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if is_classifier(model):
            return np.asarray(model.predict_proba(X), dtype=np.float64)
        return np.asarray(model.predict(X), dtype=np.float64).reshape(-1)

    def importance(self, model: Any, n_features: int) -> np.ndarray | None:
        """`feature_importances_` (trees), else the mean |coefficient| (linear models) of the final estimator."""
        final = model.steps[-1][1] if hasattr(model, "steps") else model
        raw = getattr(final, "feature_importances_", None)
        if raw is None and getattr(final, "coef_", None) is not None:
            raw = np.abs(np.atleast_2d(final.coef_)).mean(axis=0)
        return normalised(raw, n_features)

    def save(self, model: Any, directory: Path) -> list[Path]:
        path = directory / ARTIFACT
        joblib.dump(model, path)
        return [path]

    def load(self, directory: Path) -> Any:
        # joblib unpickles: only our own artifact, whose sha256 the registry checks first.
        return joblib.load(directory / ARTIFACT)

    def load_bytes(self, files: Mapping[str, bytes]) -> Any:
        import io

        # joblib unpickles: only our own artifact, verified (sha256 + HMAC) by the registry first.
        return joblib.load(io.BytesIO(files[ARTIFACT]))

    def to_onnx(self, model: Any, n_features: int, task: Task, n_classes: int, path: Path) -> None:
        import onnx
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        _patch_skl2onnx_hist_gradient_boosting()
        final = model.steps[-1][1] if isinstance(model, Pipeline) else model
        if final is model and _routes_nan_left(final):
            raise UsageError(
                f"{type(final).__name__} routes missing values per split and skl2onnx exports them all going right",
                hint="retrain with preprocess=True (imputes them) or use HistGradientBoosting*",
            )
        options = {id(final): {"zipmap": False}} if task == "classification" else None
        try:
            proto = convert_sklearn(
                model, initial_types=[("input", FloatTensorType([None, n_features]))], options=options
            )
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            raise UsageError(f"cannot export {type(final).__name__} to ONNX: {exc}") from exc
        source = "probabilities" if task == "classification" else proto.graph.output[0].name
        proto = single_output(proto, source)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))

    def cuda_available(self) -> tuple[bool, str]:
        return False, "scikit-learn trains on CPU only"

    def _losses(self, model: Any, request: FitRequest) -> dict[str, float]:
        sets = {"train_loss": (request.X_train, request.y_train), "valid_loss": (request.X_valid, request.y_valid)}
        losses: dict[str, float] = {}
        for key, (X, y) in sets.items():
            if X is None or y is None or len(X) == 0:
                continue
            predicted = self.predict(model, X)
            if request.task == "classification":
                predicted /= predicted.sum(axis=1, keepdims=True)  # float32 rounding; log_loss warns
                losses[key] = float(log_loss(y, predicted, labels=list(range(request.n_classes))))
            else:
                losses[key] = float(mean_squared_error(y, predicted))
        return losses


def build_estimator(path: str, task: Task, params: Mapping[str, Any]) -> Any:
    """An unfitted estimator of the class at `path`, with `params` checked against `get_params()`."""
    if not path.startswith("sklearn."):
        # importing anything else by name is code execution (e.g. "os.system")
        raise UsageError(f"estimator {path!r} is not under 'sklearn.'", hint="e.g. sklearn.linear_model.LogisticRegression")
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name, None)
    except (ImportError, ValueError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, BaseEstimator)):
        raise UsageError(f"estimator {path!r} is not a scikit-learn estimator class")
    try:
        estimator = cls()
    except TypeError as exc:
        raise UsageError(f"estimator {path!r} cannot be built without arguments: {exc}") from exc
    if task == "classification" and not is_classifier(estimator):
        raise UsageError(f"estimator {path!r} is not a classifier")
    if task == "regression" and not is_regressor(estimator):
        raise UsageError(f"estimator {path!r} is not a regressor")
    known = estimator.get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise UsageError(f"unknown parameter {names} for {class_name}", hint=f"known: {', '.join(sorted(known))}")
    estimator.set_params(**params)
    return estimator


def fit_preprocessor(X: np.ndarray, categorical: Mapping[int, int]) -> ColumnTransformer:
    """Median-impute and scale numeric columns, one-hot categorical codes (missing/unknown -> all zeros)."""
    numeric = [i for i in range(X.shape[1]) if i not in categorical]
    columns = sorted(categorical)
    parts: list[tuple[str, Any, list[int]]] = []
    if numeric:
        num = Pipeline(
            [("impute", SimpleImputer(strategy="median", keep_empty_features=True)), ("scale", StandardScaler())]
        )
        parts.append(("num", num, numeric))
    if columns:
        onehot = OneHotEncoder(
            categories=[list(range(categorical[i])) for i in columns],
            handle_unknown="ignore",
            sparse_output=False,
            dtype=np.float32,
        )
        impute = SimpleImputer(strategy="constant", fill_value=-1.0, keep_empty_features=True)
        parts.append(("cat", Pipeline([("impute", impute), ("onehot", onehot)]), columns))
    prep = ColumnTransformer(parts, sparse_threshold=0.0)
    prep.fit(X)
    if numeric:
        # ONNX computes (x - mean) * (1 / scale) in float32. With a float32 mean and a
        # power-of-two scale that equals sklearn's float32 result bit for bit; otherwise
        # rows sitting on a tree threshold (imputed medians, repeated values) flip sides.
        scaler = prep.named_transformers_["num"].named_steps["scale"]
        scaler.mean_ = scaler.mean_.astype(np.float32).astype(np.float64)
        scaler.scale_ = np.exp2(np.round(np.log2(scaler.scale_)))
    return prep


def single_output(proto: Any, source: str, name: str = "output") -> Any:
    """`proto` reduced to its one output `source`, renamed `name`; nodes nothing reads are dropped."""
    graph = proto.graph
    kept = [o for o in graph.output if o.name == source]
    if not kept:
        raise UsageError(f"the ONNX graph has no output {source!r}")
    needed = {source}
    nodes = []
    for node in reversed(graph.node):
        if needed & set(node.output):
            nodes.append(node)
            needed |= set(node.input)
    for node in nodes:  # only ancestors of `source` are kept, so no kept node reads it
        node.output[:] = [name if out == source else out for out in node.output]
    kept[0].name = name
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.node[:], graph.output[:], graph.initializer[:]
    graph.node.extend(reversed(nodes))
    graph.output.append(kept[0])
    graph.initializer.extend(initializers)
    return proto


def _early_stopping(estimator: Any, request: FitRequest, X_valid: np.ndarray | None) -> dict[str, Any]:
    """Turn on the estimator's own early stopping when asked; the fit() keyword args it needs."""
    rounds = request.early_stopping_rounds
    params = estimator.get_params()
    if rounds is None or "n_iter_no_change" not in params or "n_iter_no_change" in request.params:
        return {}
    estimator.set_params(n_iter_no_change=rounds)
    if "early_stopping" in params and "early_stopping" not in request.params:
        estimator.set_params(early_stopping=True)
    if X_valid is not None and len(X_valid) and "X_val" in inspect.signature(estimator.fit).parameters:
        return {"X_val": X_valid, "y_val": request.y_valid}
    return {}


def _iterations(estimator: Any) -> int:
    """Boosting rounds or epochs the estimator reports (`n_iter_`), else 1."""
    n_iter = getattr(estimator, "n_iter_", None)
    if n_iter is None or np.ndim(n_iter) > 1:
        return 1
    return max(1, int(np.max(n_iter)))


def _routes_nan_left(estimator: Any) -> bool:
    """Whether a fitted tree model sends NaN left at some split; skl2onnx 1.20 exports every NaN going right.

    Trees fitted without NaN still route it (to the larger child), and serving sends NaN for
    missing values and unknown categories, so the exported graph would disagree.
    """
    found = [estimator] if hasattr(estimator, "tree_") else list(np.ravel(getattr(estimator, "estimators_", [])))
    return any(hasattr(tree, "tree_") and bool(np.any(tree.tree_.missing_go_to_left)) for tree in found)


@functools.cache
def _patch_skl2onnx_hist_gradient_boosting() -> None:
    """skl2onnx 1.20 puts a Python bool into an int attribute for HistGradientBoosting leaves, and
    protobuf >= 5 refuses it ("Expected an int, got a boolean"); hand it an int. Applied once."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    @functools.wraps(original)
    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node
