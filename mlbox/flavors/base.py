"""The contract every flavor implements, and the values passed across it.

Flavors see only numbers: a float32 matrix X (rows x features, NaN = missing) already
encoded by `Signature.encode` (categorical levels become their index), and targets y
(class index 0..k-1 for classification, float for regression). That keeps categorical
handling in one place for training and serving, and makes every ONNX export a graph with
one float input `input` of shape [N, F].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Task = Literal["classification", "regression"]
Device = Literal["cpu", "cuda"]
# Called once per epoch / boosting round: (step, {"train_loss": .., "valid_loss": .., ...}).
ProgressFn = Callable[[int, Mapping[str, float]], None]


@dataclass(frozen=True)
class FitRequest:
    """Everything a flavor needs to fit one model."""

    task: Task
    X_train: np.ndarray  # float32 [n, f]
    y_train: np.ndarray  # int64 class index or float64 target
    X_valid: np.ndarray | None
    y_valid: np.ndarray | None
    feature_names: tuple[str, ...]
    categorical: Mapping[int, int]  # column index -> number of levels (codes 0..k-1, NaN = missing/unknown)
    n_classes: int  # 0 for regression
    params: Mapping[str, Any]
    seed: int
    device: Device
    estimator: str | None = None  # sklearn: import path, e.g. "sklearn.ensemble.HistGradientBoostingClassifier"
    preprocess: bool = False  # sklearn: wrap in Pipeline(ColumnTransformer(StandardScaler | OneHotEncoder), estimator)
    early_stopping_rounds: int | None = None
    on_progress: ProgressFn | None = None


@dataclass
class FitResult:
    model: Any
    device: Device  # where it actually trained
    steps: int = 0  # epochs or boosting rounds actually run
    best_step: int | None = None
    history: dict[str, list[float]] = field(default_factory=dict)  # metric -> per-step values
    notes: list[str] = field(default_factory=list)


class Flavor(Protocol):
    """A model family. Implementations are stateless; models are the values they return.

    The training workflow asks the flavor, never its name, about what differs between
    families: which params are valid, how many progress steps a fit reports, and whether
    validation rows are held out for early stopping.
    """

    name: str

    def check_params(self, params: Mapping[str, Any], *, task: Task, estimator: str | None, seed: int) -> None:
        """Raise UsageError for params this flavor would refuse, before any data is loaded."""
        ...

    def total_steps(self, params: Mapping[str, Any]) -> int | None:
        """How many progress steps (rounds, epochs) a fit with `params` reports at most; None if unknown."""
        ...

    def uses_validation(self, early_stopping_rounds: int | None) -> bool:
        """Whether a fit watches the validation rows; if not, the workflow trains on them too."""
        ...

    def fit(self, request: FitRequest) -> FitResult: ...

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        """Class probabilities [n, k] for classifiers, predictions [n] for regressors (native library)."""
        ...

    def importance(self, model: Any, n_features: int) -> np.ndarray | None:
        """Each input's share of the model's importance (sums to 1), or None when the family has no such measure."""
        ...

    def save(self, model: Any, directory: Path) -> list[Path]:
        """Write the native artifact(s) into `directory` in a safe format (no pickle for torch; json/ubj for xgboost)."""
        ...

    def load(self, directory: Path) -> Any: ...

    def load_bytes(self, files: Mapping[str, bytes]) -> Any:
        """The model from its native files' contents (file name -> bytes, as `save` named them), in memory only."""
        ...

    def to_onnx(self, model: Any, n_features: int, task: Task, n_classes: int, path: Path) -> None:
        """Export to ONNX at `path`: input `input` float[N, n_features]; output probabilities [N, k] or values [N, 1]."""
        ...

    def cuda_available(self) -> tuple[bool, str]:
        """Whether this flavor can train on CUDA here, and why not."""
        ...


def normalised(raw: Any, n_features: int) -> np.ndarray | None:
    """Non-negative importances scaled to sum to 1; None when there are none or their shape is off."""
    if raw is None:
        return None
    values = np.abs(np.asarray(raw, dtype=np.float64).reshape(-1))
    if values.size != n_features or not np.isfinite(values).all() or values.sum() <= 0:
        return None
    shares: np.ndarray = values / values.sum()
    return shares
