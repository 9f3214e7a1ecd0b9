"""PyTorch flavor: a tabular MLP (or the project's own module) that encodes raw rows in-graph; weights-only artifacts."""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlbox.errors import UsageError
from mlbox.flavors.base import FitRequest, FitResult, Task

WEIGHTS = "model.pt"
CONFIG = "config.json"
DEFAULT_PATIENCE = 10
CHUNK = 8192  # rows per forward pass outside training
DEFAULTS: dict[str, Any] = {
    "hidden": [64, 32],
    "dropout": 0.1,
    "epochs": 50,
    "lr": 1e-3,
    "batch_size": 256,
    "weight_decay": 0.0,
    "module": None,  # "package.module:factory" -- runs the project's own (trusted) code
    "module_params": {},
}
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "hidden": (lambda v: isinstance(v, (list, tuple)) and all(_int(x) and x > 0 for x in v), "a list of ints > 0"),
    "dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "epochs": (lambda v: _int(v) and v > 0, "a positive integer"),
    "lr": (lambda v: _number(v) and v > 0, "a positive number"),
    "batch_size": (lambda v: _int(v) and v > 0, "a positive integer"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "module": (lambda v: v is None or (isinstance(v, str) and ":" in v), "'package.module:factory'"),
    "module_params": (lambda v: isinstance(v, dict) and _json(v), "a JSON object"),
}


class Encoder(nn.Module):
    """Raw float rows -> standardized numeric columns (NaN -> 0) then one-hot categorical codes.

    A missing (NaN) or unknown code matches no level and becomes all zeros, so the exported
    graph takes the same float matrix as every other flavor.
    """

    numeric: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, numeric: list[int], categorical: list[tuple[int, int]]) -> None:
        super().__init__()
        self.categorical = categorical
        self.register_buffer("numeric", torch.tensor(numeric, dtype=torch.long), persistent=False)
        self.register_buffer("mean", torch.zeros(len(numeric)))
        self.register_buffer("std", torch.ones(len(numeric)))
        for i, (_, levels) in enumerate(categorical):
            self.register_buffer(f"levels{i}", torch.arange(levels, dtype=torch.float32), persistent=False)
        self.width = len(numeric) + sum(levels for _, levels in categorical)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if len(self.numeric):
            z = (x[:, self.numeric] - self.mean) / self.std
            parts.append(torch.where(torch.isnan(z), torch.zeros_like(z), z))
        for i, (column, _) in enumerate(self.categorical):
            parts.append((x[:, column : column + 1] == getattr(self, f"levels{i}")).to(x.dtype))
        return torch.cat(parts, dim=1)


class TabularModel(nn.Module):
    """Encoder + body; `forward` gives probabilities [N, k] or the target [N, 1], `raw` what training fits."""

    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.classification = config["task"] == "classification"
        self.encoder = Encoder(config["numeric"], [(c, k) for c, k in config["categorical"]])
        self.body = _body(config, self.encoder.width)
        self.register_buffer("y_mean", torch.tensor(0.0))  # regression target scaling
        self.register_buffer("y_std", torch.tensor(1.0))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(self.encoder(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw(x)
        return torch.softmax(out, dim=1) if self.classification else out * self.y_std + self.y_mean


class TorchFlavor:
    """Neural networks on tabular rows with PyTorch; artifacts are weights-only (no pickle).

    params: hidden, dropout, epochs, lr, batch_size, weight_decay (see DEFAULTS), or
    module="package.module:factory" with module_params: `factory(n_features, n_outputs,
    **module_params)` must return an nn.Module mapping the encoded float matrix to logits
    (or the standardized target). It is imported and called at fit and at load, so it runs
    code from the project itself, which mlbox trusts as it trusts the project's config.
    """

    name = "torch"

    def check_params(self, params: Mapping[str, Any], *, task: Task, estimator: str | None, seed: int) -> None:
        """Refuse unknown params and values of the wrong type or range (see CHECKS)."""
        _checked(params)

    def total_steps(self, params: Mapping[str, Any]) -> int | None:
        """Epochs: `epochs` (default 50)."""
        return int(params.get("epochs", DEFAULTS["epochs"]))

    def uses_validation(self, early_stopping_rounds: int | None) -> bool:
        """Always: the validation loss picks the best epoch and stops after DEFAULT_PATIENCE without progress."""
        return True

    def fit(self, request: FitRequest) -> FitResult:
        params = {**DEFAULTS, **_checked(request.params)}
        if request.device == "cuda":
            ok, why = self.cuda_available()
            if not ok:
                raise UsageError("cannot train torch on cuda", hint=why)
        device = torch.device(request.device)
        torch.manual_seed(request.seed)
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        model = _initialized(request, params).to(device)
        X, y = _tensors(request.X_train, request.y_train, model, device)
        has_valid = request.X_valid is not None and request.y_valid is not None and len(request.X_valid) > 0
        Xv, yv = _tensors(request.X_valid, request.y_valid, model, device) if has_valid else (X[:0], y[:0])
        patience = (request.early_stopping_rounds or DEFAULT_PATIENCE) if has_valid else None
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            nn.functional.cross_entropy if model.classification else nn.functional.mse_loss
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
        shuffle = torch.Generator().manual_seed(request.seed)
        history: dict[str, list[float]] = {"train_loss": [], **({"valid_loss": []} if has_valid else {})}
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        epoch = 0
        for epoch in range(1, params["epochs"] + 1):
            model.train()
            total = 0.0
            for idx in torch.split(torch.randperm(len(X), generator=shuffle).to(device), params["batch_size"]):
                optimizer.zero_grad()
                loss = loss_fn(model.raw(X[idx]), y[idx])
                torch.autograd.backward(loss)
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            metrics = {"train_loss": total / len(X)}
            if has_valid:
                metrics["valid_loss"] = float(loss_fn(_run(model, Xv, raw=True), yv))
            for key, value in metrics.items():
                history[key].append(value)
            if request.on_progress is not None:
                request.on_progress(epoch, metrics)
            if patience is not None:
                if best is None or metrics["valid_loss"] < best[0]:
                    best = (metrics["valid_loss"], epoch, copy.deepcopy(model.state_dict()))
                elif epoch - best[1] >= patience:
                    break
        if best is not None:
            model.load_state_dict(best[2])
        model.eval()
        return FitResult(
            model=model, device=request.device, steps=epoch, best_step=None if best is None else best[1], history=history
        )

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        device = next(model.buffers()).device
        out = _run(model, torch.from_numpy(np.asarray(X, dtype=np.float32)).to(device), raw=False)
        result = out.cpu().numpy()
        return result if model.classification else result.reshape(-1)

    def importance(self, model: Any, n_features: int) -> np.ndarray | None:
        return None  # a network has no importance of its own worth stating; drift shares stay unweighted

    def save(self, model: Any, directory: Path) -> list[Path]:
        weights, config = directory / WEIGHTS, directory / CONFIG
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        config.write_text(json.dumps(model.config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return [weights, config]

    def load(self, directory: Path) -> Any:
        model = TabularModel(json.loads((directory / CONFIG).read_text(encoding="utf-8")))
        model.load_state_dict(torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
        return model.eval()

    def load_bytes(self, files: Mapping[str, bytes]) -> Any:
        import io

        model = TabularModel(json.loads(files[CONFIG].decode("utf-8")))
        model.load_state_dict(torch.load(io.BytesIO(files[WEIGHTS]), map_location="cpu", weights_only=True))
        return model.eval()

    def to_onnx(self, model: Any, n_features: int, task: Task, n_classes: int, path: Path) -> None:
        if model.config["n_features"] != n_features:
            raise UsageError(f"the network takes {model.config['n_features']} features, not {n_features}")
        module = copy.deepcopy(model).cpu().eval()
        batch = torch.export.Dim("batch", min=1)
        with warnings.catch_warnings(), _quiet_logging():  # the exporter's deprecation chatter is not the user's
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (torch.zeros(3, n_features),),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
                opset_version=18,
                external_data=False,
                verbose=False,
            )
        assert program is not None
        program.save(str(path), external_data=False)

    def cuda_available(self) -> tuple[bool, str]:
        if torch.cuda.is_available():
            return True, ""
        if torch.version.cuda is None:
            return False, f"torch {torch.__version__} was built without CUDA"
        return False, "torch sees no CUDA device (torch.cuda.is_available() is False)"


def _initialized(request: FitRequest, params: Mapping[str, Any]) -> TabularModel:
    """A fresh model whose scaling buffers come from the training rows (NaN ignored)."""
    n_features = request.X_train.shape[1]
    config = {
        "task": request.task,
        "n_features": n_features,
        "n_outputs": request.n_classes if request.task == "classification" else 1,
        "numeric": [i for i in range(n_features) if i not in request.categorical],
        "categorical": [[c, int(request.categorical[c])] for c in sorted(request.categorical)],
        **{key: params[key] for key in ("hidden", "dropout", "module", "module_params")},
    }
    config["hidden"] = list(config["hidden"])
    model = TabularModel(config)
    X = np.asarray(request.X_train, dtype=np.float64)[:, config["numeric"]]
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(X, axis=0), nan=0.0) if len(X) else np.zeros(X.shape[1])
        std = np.nan_to_num(np.nanstd(X, axis=0), nan=1.0) if len(X) else np.ones(X.shape[1])
    model.encoder.mean.copy_(torch.from_numpy(mean))
    model.encoder.std.copy_(torch.from_numpy(np.where(std > 1e-12, std, 1.0)))
    if not model.classification:
        y = np.asarray(request.y_train, dtype=np.float64)
        model.y_mean.fill_(float(y.mean()))
        model.y_std.fill_(float(y.std()) if y.std() > 1e-12 else 1.0)
    return model


def _body(config: Mapping[str, Any], width: int) -> nn.Module:
    """The network after the encoder: the built-in MLP, or `factory(width, n_outputs, **module_params)`."""
    if config["module"]:
        module_name, _, attr = str(config["module"]).partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"cannot import module factory {config['module']!r}: {exc}") from exc
        body = factory(width, config["n_outputs"], **config["module_params"])
        if not isinstance(body, nn.Module):
            raise UsageError(f"{config['module']} returned {type(body).__name__}, not a torch.nn.Module")
        return body
    layers: list[nn.Module] = []
    for size in config["hidden"]:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(config["dropout"])]
        width = size
    layers.append(nn.Linear(width, config["n_outputs"]))
    return nn.Sequential(*layers)


def _tensors(
    X: np.ndarray | None, y: np.ndarray | None, model: TabularModel, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and training targets on `device`: class indices, or the standardized target [n, 1]."""
    assert X is not None and y is not None
    features = torch.from_numpy(np.asarray(X, dtype=np.float32)).to(device)
    if model.classification:
        return features, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    target = torch.from_numpy(np.asarray(y, dtype=np.float32)).to(device).reshape(-1, 1)
    return features, (target - model.y_mean) / model.y_std


def _run(model: TabularModel, X: torch.Tensor, *, raw: bool) -> torch.Tensor:
    """`model` on `X` in evaluation mode, CHUNK rows at a time."""
    model.eval()
    with torch.no_grad():
        parts = [model.raw(chunk) if raw else model(chunk) for chunk in torch.split(X, CHUNK)]
    return torch.cat(parts) if parts else model(X)


def _checked(params: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in params.items():
        if key not in CHECKS:
            raise UsageError(f"unknown parameter {key!r} for torch", hint=f"known: {', '.join(sorted(CHECKS))}")
        check, what = CHECKS[key]
        if not check(value):
            raise UsageError(f"parameter {key!r} must be {what}, not {value!r}")
    return dict(params)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence the torch.onnx exporter's progress lines (it logs each stage at INFO/WARNING)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
