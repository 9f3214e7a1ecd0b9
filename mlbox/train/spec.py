"""Training specs: YAML (safe_load) or Python, checked completely before any training starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlbox.errors import UsageError
from mlbox.flavors import FLAVORS
from mlbox.train.metrics import Gate, check_metrics
from mlbox.types import check_keys, printable, read_text_file

TOP_KEYS = {
    "experiment", "name", "task", "data", "target", "flavor", "estimator", "preprocess", "params", "split",
    "metrics", "seed", "device", "early_stopping_rounds", "gate", "model",
}  # fmt: skip
DATA_KEYS = {"labels", "timestamp", "features", "snapshot", "path", "drop"}
SPLIT_KEYS = {"method", "test_size", "valid_size", "folds", "timestamp"}


@dataclass(frozen=True)
class DataSpec:
    labels: str | None = None  # feature-store mode: labels file + feature references
    features: tuple[str, ...] = ()
    timestamp: str | None = None
    snapshot: int | None = None
    path: str | None = None  # plain-file mode
    drop: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitSpec:
    method: str = "random"  # time | random | kfold
    test_size: float = 0.2
    valid_size: float = 0.15  # carved from the training part, for early stopping
    folds: int = 5
    timestamp: str | None = None  # plain-file time split


@dataclass(frozen=True)
class TrainSpec:
    experiment: str
    task: str
    target: str
    flavor: str
    data: DataSpec
    params: Mapping[str, Any] = field(default_factory=dict)
    estimator: str | None = None
    preprocess: bool = False
    split: SplitSpec = SplitSpec()
    metrics: tuple[str, ...] = ()
    seed: int = 42
    device: str = "auto"
    early_stopping_rounds: int | None = None
    gate: Gate | None = None
    model: str | None = None  # registered model name (default: the experiment)
    name: str | None = None
    base_dir: Path = Path(".")

    @property
    def model_name(self) -> str:
        return self.model or self.experiment.replace("-", "_")

    def as_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "task": self.task,
            "target": self.target,
            "flavor": self.flavor,
            "estimator": self.estimator,
            "preprocess": self.preprocess,
            "params": dict(self.params),
            "split": self.split.__dict__,
            "metrics": list(self.metrics),
            "seed": self.seed,
            "device": self.device,
            "early_stopping_rounds": self.early_stopping_rounds,
            "gate": None if self.gate is None else dict(self.gate.__dict__),
            "model": self.model_name,
            "name": self.name,
            "data": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.data.__dict__.items()},
        }


def parse_spec(raw: Mapping[str, Any], where: str = "spec", base_dir: Path = Path(".")) -> TrainSpec:
    """Check every key and value; raise UsageError naming the first problem."""
    check_keys(raw, TOP_KEYS, where)
    for key in ("experiment", "task", "target", "flavor", "data"):
        if key not in raw:
            raise UsageError(f"{where}: missing required key {key!r}")
    task = str(raw["task"])
    if task not in ("classification", "regression"):
        raise UsageError(f"{where}: task must be classification or regression, got {task!r}")
    flavor = str(raw["flavor"])
    if flavor not in FLAVORS:
        raise UsageError(f"{where}: unknown flavor {flavor!r}", hint=f"flavors are {', '.join(sorted(FLAVORS))}")
    d = raw["data"]
    check_keys(d, DATA_KEYS, f"{where}: data")
    if bool(d.get("labels")) == bool(d.get("path")):
        raise UsageError(f"{where}: data needs either labels + features (feature store) or path (a file), not both")
    if d.get("labels") and not d.get("features"):
        raise UsageError(f"{where}: data.features lists no features")
    data = DataSpec(
        labels=d.get("labels"),
        features=tuple(str(f) for f in d.get("features") or ()),
        timestamp=d.get("timestamp"),
        snapshot=None if d.get("snapshot") is None else int(d["snapshot"]),
        path=d.get("path"),
        drop=tuple(str(c) for c in d.get("drop") or ()),
    )
    s = raw.get("split") or {}
    check_keys(s, SPLIT_KEYS, f"{where}: split")
    split = SplitSpec(
        method=str(s.get("method", "random")),
        test_size=float(s.get("test_size", 0.2)),
        valid_size=float(s.get("valid_size", 0.15)),
        folds=int(s.get("folds", 5)),
        timestamp=s.get("timestamp"),
    )
    if split.method not in ("time", "random", "kfold"):
        raise UsageError(f"{where}: split.method must be time, random or kfold, got {split.method!r}")
    if not 0 < split.test_size < 1 or not 0 <= split.valid_size < 1 or split.folds < 2:
        raise UsageError(f"{where}: split sizes must be fractions in (0, 1) and folds >= 2")
    device = str(raw.get("device", "auto"))
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"{where}: device must be auto, cpu or cuda, got {device!r}")
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise UsageError(f"{where}: params must be a mapping")
    if raw.get("estimator") is not None and flavor != "sklearn":
        raise UsageError(f"{where}: estimator is only for flavor sklearn")
    esr = raw.get("early_stopping_rounds")
    gate = None if raw.get("gate") is None else Gate.parse(raw["gate"], task)
    metrics = check_metrics(task, [str(m) for m in raw.get("metrics") or ()])
    if gate is not None and gate.metric not in metrics:
        metrics = (*metrics, gate.metric)  # the gate's metric is always computed
    if raw.get("preprocess") and flavor != "sklearn":
        raise UsageError(f"{where}: preprocess is only for flavor sklearn (xgboost and torch handle raw inputs)")
    return TrainSpec(
        experiment=str(raw["experiment"]),
        task=task,
        target=str(raw["target"]),
        flavor=flavor,
        data=data,
        params=dict(params),
        estimator=raw.get("estimator"),
        preprocess=bool(raw.get("preprocess", False)),
        split=split,
        metrics=metrics,
        seed=int(raw.get("seed", 42)),
        device=device,
        early_stopping_rounds=None if esr is None else int(esr),
        gate=gate,
        model=raw.get("model"),
        name=raw.get("name"),
        base_dir=base_dir,
    )


def load_spec(path: Path) -> TrainSpec:
    import yaml

    text = read_text_file(path, "training spec")  # a regular, bounded UTF-8 file: never a device or a binary
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{printable(path)}: not valid YAML: {printable(exc)}") from None
    if not isinstance(raw, Mapping):
        raise UsageError(f"{printable(path)}: a training spec is a mapping of keys")
    return parse_spec(raw, str(path), path.resolve().parent)
