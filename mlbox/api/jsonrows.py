"""JSON rows pushed over HTTP checked against a feature view's dtypes before the store sees them.

The store's push validation reads rows the way ingest reads a file, coercing strings and
booleans to each column's type; a JSON body carries types of its own, so `{"plan": {}}` or
`{"monthly_charges": false}` is a client error here, named by row and field (422), and a
number outside a column's range never reaches Arrow (which would fail with a 500).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlbox.errors import ValidationError

FLOAT32_MAX = float(np.finfo(np.float32).max)
INT_RANGE = {"int64": 2**63, "int32": 2**31}


def _integer(value: Any, bound: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not value.is_integer():
        return False
    return -bound <= value < bound if isinstance(value, int) else -bound < value < bound  # a float at ±2^63 was rounded


def fits(value: Any, dtype: str) -> bool:
    """Whether a JSON value is of the column type `dtype` (None is left to the store's null rules)."""
    if value is None:
        return True
    if dtype in INT_RANGE:
        return _integer(value, INT_RANGE[dtype])
    if dtype in ("float64", "float32"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        limit = FLOAT32_MAX if dtype == "float32" else math.inf
        try:
            return math.isfinite(float(value)) and abs(float(value)) <= limit
        except OverflowError:
            return False
    if dtype == "bool":
        return isinstance(value, bool)
    return isinstance(value, str)  # string, and timestamp/date as ISO 8601 text


def check_rows(rows: list[Mapping[str, Any]], keys: Mapping[str, str], timestamp: str, fields: Mapping[str, str]) -> None:
    """Raise a ValidationError naming the first row and field whose JSON type is not its column's."""
    # string join keys also take integers, as entity lookups do
    columns = {**{k: ("key" if t == "string" else t) for k, t in keys.items()}, timestamp: "timestamp", **fields}
    for i, row in enumerate(rows):
        for name, value in row.items():
            dtype = columns.get(name)
            if dtype is None:
                continue  # an unknown column: the store names it with the rest of the mismatch
            ok = (isinstance(value, (str, int)) and not isinstance(value, bool)) if dtype == "key" else fits(value, dtype)
            if not ok:
                want = "a string or an integer" if dtype == "key" else dtype
                raise ValidationError(f"rows[{i}]: field {name!r} must be {want}, got {type(value).__name__} {value!r:.40}")
