"""Reference profiles (format mlbox-profile/1): the training distributions a drift check compares against.

A numeric entry keeps a grid of at most 1001 reference values with their empirical CDF (every
distinct value when there are at most 1001, else the quantiles at levels i/1000), the decile bins
of PSI/JS/chi-squared with their counts, and min/max/mean/std; a categorical entry keeps level
counts. One sort per column builds everything, so profiling 1M rows × 50 columns takes seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mlbox.errors import UsageError
from mlbox.flavors.signature import Signature

FORMAT = "mlbox-profile/1"
GRID_POINTS = 1001  # levels i/1000, i = 0..1000
BINS = 10  # decile bins for PSI, JS and chi-squared


def build_profile(
    X: np.ndarray,
    signature: Signature,
    *,
    task: str,
    predictions: np.ndarray | None = None,
    importance: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The reference profile of an encoded training matrix (float32, NaN = missing, categoricals as level index).

    `predictions` are the model's outputs on X or on a sample of its rows (the output entries carry
    their own row counts): regression (n,) values; classification (n, k) class probabilities in
    `signature.classes` order. `importance` maps feature names to weights.
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(signature.columns):
        raise UsageError(f"the matrix has shape {X.shape}, but the signature has {len(signature.columns)} columns")
    features: dict[str, Any] = {}
    for j, col in enumerate(signature.columns):
        column = X[:, j].astype(np.float64)
        if col.kind == "numeric":
            features[col.name] = numeric_entry(column)
        else:
            features[col.name] = categorical_entry(_level_counts(column, col.levels))
    return {
        "format": FORMAT,
        "rows": int(X.shape[0]),
        "features": features,
        "outputs": output_entries(predictions, signature, task) if predictions is not None else {},
        "importance": _importance(importance, signature) if importance else None,
    }


def is_current(profile: Any) -> bool:
    """Whether `profile` is a profile in the format this mlbox writes and reads."""
    return (
        isinstance(profile, Mapping)
        and profile.get("format") == FORMAT
        and isinstance(profile.get("features"), Mapping)
        and isinstance(profile.get("rows"), int)
    )


def numeric_entry(values: np.ndarray) -> dict[str, Any]:
    """The numeric entry of one column of values (NaN = null; ±inf are counted as null too)."""
    s = np.sort(np.asarray(values, dtype=np.float64).ravel())
    x = s[np.searchsorted(s, -np.inf, side="right") : np.searchsorted(s, np.inf, side="left")]
    n = int(x.size)
    entry: dict[str, Any] = {"kind": "numeric", "rows": int(s.size), "nulls": int(s.size - n)}
    if n == 0:
        return {**entry, "min": None, "max": None, "mean": None, "std": None, "grid": [], "cdf": [], "edges": [], "counts": []}
    starts = np.flatnonzero(np.concatenate([[True], x[1:] != x[:-1]]))
    if starts.size <= GRID_POINTS:
        grid = x[starts]
    else:
        grid = np.unique(x[_order_stats(n, np.linspace(0.0, 1.0, GRID_POINTS))])
    cdf = np.searchsorted(x, grid, side="right") / n
    edges = np.unique(x[_order_stats(n, np.arange(1, BINS) / BINS)])
    edges = edges[edges < x[-1]]  # the last bin (e_k, inf) holds the maximum, so no reference bin is empty
    counts = np.diff(np.concatenate([[0], np.searchsorted(x, edges, side="right"), [n]]))
    mean = float(np.mean(x))
    return {
        **entry,
        "min": float(x[0]),
        "max": float(x[-1]),
        "mean": mean,
        "std": float(np.sqrt(np.mean((x - mean) ** 2))),
        "grid": grid.tolist(),
        "cdf": cdf.tolist(),
        "edges": edges.tolist(),
        "counts": counts.astype(int).tolist(),
    }


def categorical_entry(counts: Mapping[str | None, int]) -> dict[str, Any]:
    """The categorical entry of level counts (the None key counts nulls); level order is kept."""
    nulls = int(counts.get(None, 0) or 0)
    levels = {str(level): int(n) for level, n in counts.items() if level is not None}
    return {"kind": "categorical", "rows": nulls + sum(levels.values()), "nulls": nulls, "levels": levels}


def output_entries(predictions: np.ndarray, signature: Signature, task: str) -> dict[str, Any]:
    """Entries of the model's outputs: "prediction" (regression), or "class" and "p_<class>" (classification)."""
    preds = np.asarray(predictions, dtype=np.float64)
    if task == "regression":
        if preds.ndim != 1:
            raise UsageError(f"regression predictions must have shape (n,), got {preds.shape}")
        return {"prediction": numeric_entry(preds)}
    if task != "classification":
        raise UsageError(f"unknown task {task!r}", hint="use classification or regression")
    classes = [str(c) for c in signature.classes]
    if preds.ndim != 2 or preds.shape[1] != len(classes) or len(classes) < 2:
        raise UsageError(f"classification predictions must have shape (n, {len(classes)}) of class probabilities, got {preds.shape}")
    present = ~np.isnan(preds).any(axis=1)
    winners = np.bincount(np.argmax(preds[present], axis=1), minlength=len(classes)) if present.any() else np.zeros(len(classes), int)
    counts: dict[str | None, int] = {c: int(n) for c, n in zip(classes, winners, strict=True)}
    counts[None] = int((~present).sum())
    out: dict[str, Any] = {"class": categorical_entry(counts)}
    for k in [1] if len(classes) == 2 else range(len(classes)):  # binary: the positive class's probability only
        out[f"p_{classes[k]}"] = numeric_entry(preds[:, k])
    return out


def _order_stats(n: int, levels: np.ndarray) -> np.ndarray:
    """Indices of the sample quantiles at `levels`: the smallest value whose empirical CDF reaches the level."""
    out: np.ndarray = np.clip(np.ceil(levels * n).astype(np.int64) - 1, 0, n - 1)
    return out


def _level_counts(codes: np.ndarray, levels: tuple[str, ...]) -> dict[str | None, int]:
    """Counts per level name of a column of level indices (NaN = missing or unseen), every level listed."""
    present = codes[~np.isnan(codes)].astype(np.int64)
    if present.size and present.min() < 0:
        raise UsageError(f"level index {int(present.min())} is negative; categorical columns hold level indices")
    tally = np.bincount(present, minlength=len(levels)) if present.size else np.zeros(len(levels), np.int64)
    if tally.size > len(levels):
        raise UsageError(f"level index {int(present.max())} is outside the signature's {len(levels)} levels")
    counts: dict[str | None, int] = {level: int(n) for level, n in zip(levels, tally, strict=True)}
    counts[None] = int(codes.size - present.size)
    return counts


def _importance(importance: Mapping[str, float], signature: Signature) -> dict[str, float]:
    """Non-negative finite weights of signature features (others dropped)."""
    out: dict[str, float] = {}
    for name in signature.names:
        try:
            weight = float(importance.get(name, 0.0))
        except (TypeError, ValueError):
            raise UsageError(f"importance of feature {name!r} is not a number") from None
        out[name] = weight if np.isfinite(weight) and weight > 0 else 0.0
    return out
