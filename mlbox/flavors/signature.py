"""A model's input signature, and the one encoding of inputs used at training and at serving.

Numeric columns pass through as float32 (missing → NaN). Categorical columns (strings,
booleans) become the index of their level among the levels seen in training; unseen or
missing levels become NaN, which every flavor treats as missing. The signature is stored
with each model version, so serving encodes requests exactly as training encoded rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlbox.errors import UsageError, ValidationError

Kind = Literal["numeric", "categorical"]
MAX_LEVELS = 1000
BINS = 10


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    dtype: str  # as seen in training: int64, float64, string, bool
    levels: tuple[str, ...] = ()
    required: bool = True  # a request must carry it (it may still be null when nullable)
    nullable: bool = False  # nulls were seen in training


@dataclass(frozen=True)
class Signature:
    columns: tuple[Column, ...]
    task: Literal["classification", "regression"]
    target: str
    classes: tuple[Any, ...] = ()  # class labels in index order (classification)
    index: Mapping[str, Mapping[str, int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        lookup = {c.name: {lvl: i for i, lvl in enumerate(c.levels)} for c in self.columns if c.kind == "categorical"}
        object.__setattr__(self, "index", lookup)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def layout(self) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
        """(column names, positions of numeric columns, positions of categorical columns), computed once."""
        kinds = [c.kind for c in self.columns]
        numeric = tuple(i for i, k in enumerate(kinds) if k == "numeric")
        return self.names, numeric, tuple(i for i, k in enumerate(kinds) if k == "categorical")

    @property
    def categorical(self) -> dict[int, int]:
        """Column position -> number of levels, for the flavors."""
        return {i: len(c.levels) for i, c in enumerate(self.columns) if c.kind == "categorical"}

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": [asdict(c) for c in self.columns],
            "task": self.task,
            "target": self.target,
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        cols = tuple(Column(**{**c, "levels": tuple(c["levels"])}) for c in data["columns"])
        return cls(cols, data["task"], data["target"], tuple(data.get("classes", ())))

    @classmethod
    def infer(cls, frame: pd.DataFrame, features: Sequence[str], target: str, task: str) -> Signature:
        """Derive the signature from a training frame."""
        if task not in ("classification", "regression"):
            raise UsageError(f"unknown task {task!r}", hint="use classification or regression")
        cols = []
        for name in features:
            s = frame[name]
            nullable = bool(s.isna().any())
            if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
                levels = sorted({str(v) for v in s.dropna().unique()})
                if len(levels) > MAX_LEVELS:
                    raise ValidationError(
                        f"feature {name!r} has {len(levels)} distinct values; at most {MAX_LEVELS} categorical levels",
                        hint="drop it, bucket it, or make it numeric",
                    )
                dtype = "bool" if pd.api.types.is_bool_dtype(s) else "string"
                cols.append(Column(name, "categorical", dtype, tuple(levels), True, nullable))
            else:
                dtype = "int64" if pd.api.types.is_integer_dtype(s) else "float64"
                cols.append(Column(name, "numeric", dtype, (), True, nullable))
        classes: tuple[Any, ...] = ()
        if task == "classification":
            values = frame[target].dropna().unique().tolist()
            if len(values) < 2:
                raise ValidationError(f"target {target!r} has fewer than two classes")
            classes = tuple(sorted(values, key=lambda v: (str(type(v)), v)))
        return cls(tuple(cols), task, target, classes)  # type: ignore[arg-type]

    # encoding -------------------------------------------------------------
    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Float32 matrix [rows, columns] in signature order."""
        missing = [c.name for c in self.columns if c.name not in frame.columns]
        if missing:
            raise ValidationError(f"missing feature column(s): {', '.join(missing)}")
        out = np.empty((len(frame), len(self.columns)), dtype=np.float32)
        for j, col in enumerate(self.columns):
            s = frame[col.name]
            if col.kind == "numeric":
                try:
                    out[:, j] = pd.to_numeric(s, errors="raise").astype("float64").to_numpy(na_value=np.nan)
                except (TypeError, ValueError):
                    raise ValidationError(f"feature {col.name!r} must be numeric") from None
            else:
                lookup = self.index[col.name]
                out[:, j] = [lookup.get(str(v), math.nan) if v is not None and v == v else math.nan for v in s.tolist()]
        return out

    def encode_target(self, values: pd.Series) -> np.ndarray:
        if values.isna().any():
            raise ValidationError(f"target {self.target!r} has {int(values.isna().sum())} missing value(s)")
        if self.task == "regression":
            return np.asarray(pd.to_numeric(values, errors="raise"), dtype=np.float64)
        lookup = {v: i for i, v in enumerate(self.classes)}
        try:
            return np.array([lookup[v] for v in values.tolist()], dtype=np.int64)
        except KeyError as exc:
            raise ValidationError(f"target value {exc.args[0]!r} was not seen in training") from None


def reference_stats(X: np.ndarray, signature: Signature) -> dict[str, Any]:
    """Training distributions per feature, the reference for drift: decile bins or level frequencies."""
    stats: dict[str, Any] = {"rows": int(X.shape[0]), "features": {}}
    for j, col in enumerate(signature.columns):
        x = X[:, j].astype(np.float64)
        present = x[~np.isnan(x)]
        entry: dict[str, Any] = {"kind": col.kind, "nulls": int(np.isnan(x).sum())}
        if col.kind == "numeric" and present.size:
            edges = np.unique(np.quantile(present, np.linspace(0, 1, BINS + 1)))
            counts = np.histogram(present, bins=edges)[0] if edges.size > 1 else np.array([present.size])
            entry.update(
                mean=float(present.mean()),
                std=float(present.std()),
                min=float(present.min()),
                max=float(present.max()),
                edges=edges.tolist(),
                counts=counts.tolist(),
            )
        elif col.kind == "categorical":
            codes, counts = np.unique(present.astype(np.int64), return_counts=True)
            entry["frequencies"] = {col.levels[int(c)]: int(n) for c, n in zip(codes, counts, strict=True)}
        stats["features"][col.name] = entry
    return stats
