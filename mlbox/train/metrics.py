"""Evaluation metrics and validation gates, as pure functions over predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlbox.errors import UsageError

CLASSIFICATION = ("roc_auc", "accuracy", "log_loss", "f1", "precision", "recall")
REGRESSION = ("rmse", "mae", "r2", "mape")
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae", "mape"})
DEFAULTS = {"classification": ("roc_auc", "accuracy", "log_loss"), "regression": ("rmse", "mae", "r2")}


def check_metrics(task: str, names: Sequence[str]) -> tuple[str, ...]:
    known = CLASSIFICATION if task == "classification" else REGRESSION
    bad = [n for n in names if n not in known]
    if bad:
        raise UsageError(f"unknown {task} metric {bad[0]!r}", hint=f"use {', '.join(known)}")
    return tuple(names) or DEFAULTS[task]


def evaluate(task: str, names: Sequence[str], y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Metric values; `pred` is probabilities [n, k] for classification, values [n] for regression."""
    from sklearn import metrics as m

    out: dict[str, float] = {}
    if task == "classification":
        pred = np.asarray(pred, dtype=np.float64)
        pred = pred / np.clip(pred.sum(axis=1, keepdims=True), 1e-12, None)  # float32 rows sum to 1 ± 1e-7
        labels = np.arange(pred.shape[1])
        hard = pred.argmax(axis=1)
        binary = pred.shape[1] == 2
        average = "binary" if binary else "macro"
        for name in names:
            if name == "roc_auc":
                if len(np.unique(y)) < 2:
                    out[name] = float("nan")
                else:
                    out[name] = float(m.roc_auc_score(y, pred[:, 1]) if binary else m.roc_auc_score(y, pred, multi_class="ovr", labels=labels))
            elif name == "accuracy":
                out[name] = float(m.accuracy_score(y, hard))
            elif name == "log_loss":
                out[name] = float(m.log_loss(y, np.clip(pred, 1e-15, 1), labels=labels))
            elif name == "f1":
                out[name] = float(m.f1_score(y, hard, average=average, zero_division=0))
            elif name == "precision":
                out[name] = float(m.precision_score(y, hard, average=average, zero_division=0))
            elif name == "recall":
                out[name] = float(m.recall_score(y, hard, average=average, zero_division=0))
        return out
    for name in names:
        if name == "rmse":
            out[name] = float(np.sqrt(np.mean((y - pred) ** 2)))
        elif name == "mae":
            out[name] = float(np.mean(np.abs(y - pred)))
        elif name == "r2":
            out[name] = float(m.r2_score(y, pred))
        elif name == "mape":
            out[name] = float(np.mean(np.abs((y - pred) / np.where(y == 0, np.nan, y))))
    return out


@dataclass(frozen=True)
class Gate:
    metric: str
    min: float | None = None
    max: float | None = None
    must_beat: str | None = None  # an alias, e.g. "production"

    @classmethod
    def parse(cls, data: Mapping[str, Any], task: str) -> Gate:
        unknown = set(data) - {"metric", "min", "max", "must_beat"}
        if unknown:
            raise UsageError(f"gate: unknown key {sorted(unknown)[0]!r}", hint="use metric, min, max, must_beat")
        metric = str(data.get("metric", ""))
        check_metrics(task, [metric])
        beat = data.get("must_beat")
        if beat is not None and beat not in ("staging", "production"):
            raise UsageError(f"gate: must_beat {beat!r} is not staging or production")
        lo, hi = data.get("min"), data.get("max")
        return cls(metric, None if lo is None else float(lo), None if hi is None else float(hi), beat)


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def check_gate(gate: Gate | None, metrics: Mapping[str, float], incumbent: Mapping[str, Any] | None) -> GateResult:
    """Does a run pass its gate? `incumbent` is the metrics of the must_beat version, if one exists."""
    if gate is None:
        return GateResult(True, ["no gate"])
    value = metrics.get(gate.metric)
    if value is None or value != value:
        return GateResult(False, [f"{gate.metric} was not computed"])
    reasons, ok = [], True
    if gate.min is not None:
        passed = value >= gate.min
        ok &= passed
        reasons.append(f"{gate.metric} {value:.4g} {'>=' if passed else '<'} min {gate.min:g}")
    if gate.max is not None:
        passed = value <= gate.max
        ok &= passed
        reasons.append(f"{gate.metric} {value:.4g} {'<=' if passed else '>'} max {gate.max:g}")
    if gate.must_beat:
        other = None if incumbent is None else incumbent.get(gate.metric)
        if other is None:
            reasons.append(f"no {gate.must_beat} model with {gate.metric} to beat")
        else:
            better = value < other if gate.metric in LOWER_IS_BETTER else value > other
            ok &= better
            reasons.append(f"{gate.metric} {value:.4g} {'beats' if better else 'does not beat'} {gate.must_beat} {other:.4g}")
    return GateResult(bool(ok), reasons)
