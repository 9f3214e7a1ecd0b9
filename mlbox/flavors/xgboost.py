"""XGBoost flavor: native `xgboost.train` boosters, `model.ubj` artifacts, onnxmltools export."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from mlbox import hardware
from mlbox.errors import UsageError
from mlbox.flavors.base import FitRequest, FitResult, ProgressFn, Task, normalised

ARTIFACT = "model.ubj"
DEFAULT_ROUNDS = 200
DEFAULT_PATIENCE = 10  # rounds without improvement on the validation set, as the torch flavor
# Set from the request (task, n_classes, device, seed); a param of the same name is refused.
DERIVED = ("objective", "num_class", "eval_metric", "device")
SCALARS = (bool, int, float, str)


class XGBoostFlavor:
    """Gradient-boosted trees through XGBoost's native API (no pickle anywhere)."""

    name = "xgboost"

    def check_params(self, params: Mapping[str, Any], *, task: Task, estimator: str | None, seed: int) -> None:
        """Refuse derived, non-scalar or malformed params (what `booster_params` would refuse)."""
        empty = np.zeros((0, 1), dtype=np.float32)
        booster_params(FitRequest(task, empty, empty, None, None, (), {}, 2, params, seed, "cpu"))

    def total_steps(self, params: Mapping[str, Any]) -> int | None:
        """Boosting rounds: `n_estimators` (default 200)."""
        return int(params.get("n_estimators", DEFAULT_ROUNDS))

    def uses_validation(self, early_stopping_rounds: int | None) -> bool:
        """Always: the validation rows drive early stopping (DEFAULT_PATIENCE rounds when not given)."""
        return True

    def fit(self, request: FitRequest) -> FitResult:
        params, rounds = booster_params(request)
        if request.device == "cuda":
            ok, why = self.cuda_available()
            if not ok:
                raise UsageError("cannot train xgboost on cuda", hint=why)
        train = xgb.DMatrix(np.asarray(request.X_train, dtype=np.float32), label=request.y_train, missing=np.nan)
        evals = [(train, "train")]
        patience = None
        notes: list[str] = []
        if request.X_valid is not None and request.y_valid is not None and len(request.X_valid):
            valid = xgb.DMatrix(np.asarray(request.X_valid, dtype=np.float32), label=request.y_valid, missing=np.nan)
            evals.append((valid, "valid"))  # the last one is the one early stopping watches
            patience = request.early_stopping_rounds or DEFAULT_PATIENCE
        elif request.early_stopping_rounds:
            notes.append("early stopping needs a validation set: trained all rounds")
        log: dict[str, Any] = {}
        booster = xgb.train(
            params,
            train,
            num_boost_round=rounds,
            evals=evals,
            early_stopping_rounds=patience,
            evals_result=log,
            verbose_eval=False,
            callbacks=[_progress_callback(request.on_progress)],
        )
        metric = str(params["eval_metric"])
        history = {f"{name}_loss": [float(v) for v in log[name][metric]] for name in ("train", "valid") if name in log}
        steps = len(history["train_loss"])
        best_step = None
        if patience is not None:
            best_step = int(booster.best_iteration) + 1
            booster = booster[:best_step]  # keep the best rounds only, so every export agrees
        return FitResult(
            model=booster, device=request.device, steps=steps, best_step=best_step, history=history, notes=notes
        )

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        p = model.predict(xgb.DMatrix(np.asarray(X, dtype=np.float32), missing=np.nan))
        if objective(model) == "binary:logistic":
            return np.column_stack([1.0 - p, p])
        return np.asarray(p)

    def importance(self, model: Any, n_features: int) -> np.ndarray | None:
        """Total gain per input (xgboost names inputs f0, f1, … in column order)."""
        scores = model.get_score(importance_type="total_gain")
        raw = np.zeros(n_features)
        for key, value in scores.items():
            index = int(key[1:]) if key[:1] == "f" and key[1:].isdigit() else -1
            if 0 <= index < n_features:
                raw[index] = float(value)
        return normalised(raw, n_features)

    def save(self, model: Any, directory: Path) -> list[Path]:
        path = directory / ARTIFACT
        model.save_model(str(path))
        return [path]

    def load(self, directory: Path) -> Any:
        booster = xgb.Booster()
        booster.load_model(str(directory / ARTIFACT))
        return booster

    def load_bytes(self, files: Mapping[str, bytes]) -> Any:
        booster = xgb.Booster()
        booster.load_model(bytearray(files[ARTIFACT]))  # a bytearray is read as the raw model, not a file name
        return booster

    def to_onnx(self, model: Any, n_features: int, task: Task, n_classes: int, path: Path) -> None:
        import onnx
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        from mlbox.flavors.sklearn import single_output

        if model.num_features() != n_features:
            raise UsageError(f"the booster takes {model.num_features()} features, not {n_features}")
        # onnxmltools wraps a bare Booster itself, reading objective/num_class/base_score from its config
        proto = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, n_features]))])
        proto = single_output(proto, "probabilities" if task == "classification" else "variable")
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))

    def cuda_available(self) -> tuple[bool, str]:
        inventory = hardware.detect()
        if not inventory.gpus:
            return False, inventory.reason
        if not xgb.build_info().get("USE_CUDA"):
            return False, f"xgboost {xgb.__version__} was built without CUDA (the xgboost-cpu package)"
        return True, ""


def booster_params(request: FitRequest) -> tuple[dict[str, Any], int]:
    """`xgboost.train` params and the number of rounds for `request`; unknown names pass through."""
    params: dict[str, Any] = {}
    for key, value in request.params.items():
        if key in DERIVED:
            raise UsageError(f"parameter {key!r} is set by mlbox", hint="it follows from the task and the device")
        if not _plain(value):
            raise UsageError(f"parameter {key!r} must be a number, string or list of them, not {type(value).__name__}")
        params[key] = value
    rounds = params.pop("n_estimators", DEFAULT_ROUNDS)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UsageError(f"n_estimators must be a positive integer, not {rounds!r}")
    if "learning_rate" in params:
        params["eta"] = params.pop("learning_rate")
    params.setdefault("seed", request.seed)
    if request.task == "regression":
        params.update(objective="reg:squarederror", eval_metric="rmse")
    elif request.n_classes == 2:
        params.update(objective="binary:logistic", eval_metric="logloss")
    else:
        params.update(objective="multi:softprob", num_class=request.n_classes, eval_metric="mlogloss")
    params["device"] = request.device
    return params, rounds


def objective(booster: Any) -> str:
    """The objective a (possibly loaded) booster was trained with."""
    config: Mapping[str, Any] = json.loads(booster.save_config())
    return str(config["learner"]["objective"]["name"])


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, SCALARS) for v in value)
    return isinstance(value, SCALARS)


def _progress_callback(on_progress: ProgressFn | None) -> xgb.callback.TrainingCallback:
    """A callback reporting (round, {"train_loss", "valid_loss"}) after every boosting round."""

    class Progress(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            if on_progress is not None:
                metrics = {f"{name}_loss": float(list(log.values())[-1][-1]) for name, log in evals_log.items()}
                on_progress(epoch + 1, metrics)
            return False

    return Progress()
