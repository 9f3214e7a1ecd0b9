"""Training-set fingerprints: SHA-256 over a canonical, engine-independent encoding of the inputs.

The recipe (docs/features.md, "Fingerprints") is versioned by `RECIPE`. It hashes the label
rows column by column from Arrow buffers cast to canonical types, so neither DuckDB's own
`hash()` (which changes between versions) nor its Arrow export choices (string views,
integer widths, chunking) can change a fingerprint; then the join parameters as canonical
JSON. Hashing whole buffers keeps it at memory speed: about 30 ms for a million labels.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RECIPE = "mlbox-training-set/1"


def canonical_type(t: pa.DataType) -> str:
    """The canonical kind a label column is hashed as."""
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int64" if not (pa.types.is_uint64(t)) else "string"  # uint64 may not fit int64: hash its text
    if pa.types.is_floating(t):
        return "float64"
    if pa.types.is_timestamp(t):  # instants since the epoch; ns kept as ns so no digit is dropped
        return ("timestamp_ns" if t.unit == "ns" else "timestamp_us") + ("_utc" if t.tz else "")
    if pa.types.is_date(t):
        return "date_days"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    return "string"  # strings, decimals, and anything else as Arrow's text rendering


def _validity(arr: pa.Array) -> bytes:
    if arr.null_count == 0:
        return b"\x01"  # marker: no nulls (saves packing a bitmap of ones)
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    return b"\x00" + np.packbits(valid, bitorder="little").tobytes()


def _fixed(arr: pa.Array, numpy_type: str) -> np.ndarray[Any, Any]:
    """The values as a contiguous little-endian array, nulls as 0 (hashed through the buffer protocol, no copy)."""
    values = arr.fill_null(0) if arr.null_count else arr
    return np.ascontiguousarray(values.to_numpy(zero_copy_only=False), dtype=numpy_type)


def _as_text(arr: pa.Array, target: pa.DataType) -> pa.Array:
    if arr.type == target:
        return arr
    try:
        return pc.cast(arr, target)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested or exotic types: their JSON text
        return pa.array([None if v is None else json.dumps(v, default=str, sort_keys=True) for v in arr.to_pylist()], target)


def _variable(arr: pa.Array, target: pa.DataType) -> tuple[bytes, Any]:
    """(lengths as little-endian int64, concatenated bytes) of a string/binary array; nulls are empty."""
    values = _as_text(arr, target)
    if values.null_count:
        values = values.fill_null(b"" if pa.types.is_large_binary(target) else "")
    offsets = np.frombuffer(values.buffers()[1], dtype="<i8")[values.offset : values.offset + len(values) + 1]
    data = values.buffers()[2]
    body = b"" if data is None or not len(values) else data[int(offsets[0]) : int(offsets[-1])]
    return np.diff(offsets).astype("<i8").tobytes(), body


def column_digest(h: Any, name: str, column: pa.ChunkedArray | pa.Array) -> None:
    """Feed one column's canonical encoding into the hash `h`."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = canonical_type(arr.type)
    h.update(json.dumps([name, kind, len(arr)]).encode() + b"\n")
    h.update(_validity(arr))
    if kind == "bool":
        h.update(_fixed(pc.cast(arr, pa.uint8()), "<u1"))
    elif kind == "int64":
        h.update(_fixed(pc.cast(arr, pa.int64()), "<i8"))
    elif kind == "float64":
        values = _fixed(pc.cast(arr, pa.float64()), "<f8").copy()
        values[np.isnan(values)] = math.nan  # one NaN bit pattern, whatever the payload
        values[values == 0] = 0.0  # -0.0 equals 0.0
        h.update(values)
    elif kind.startswith("timestamp"):
        unit = "ns" if kind.startswith("timestamp_ns") else "us"
        h.update(_fixed(pc.cast(arr, pa.timestamp(unit, tz=arr.type.tz)).view(pa.int64()), "<i8"))
    elif kind == "date_days":
        h.update(_fixed(pc.cast(arr, pa.date32()).view(pa.int32()), "<i4"))
    else:
        target = pa.large_binary() if kind == "binary" else pa.large_string()
        lengths, body = _variable(arr, target)
        h.update(lengths)
        h.update(body)


def digest(labels: pa.Table, params: dict[str, Any]) -> str:
    """SHA-256 hex digest of the label rows (content and order) and the join parameters."""
    h = hashlib.sha256()
    h.update(RECIPE.encode() + b"\n")
    h.update(json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode() + b"\n")
    h.update(json.dumps([labels.num_rows, labels.num_columns]).encode() + b"\n")
    for name, column in zip(labels.column_names, labels.columns, strict=True):
        column_digest(h, name, column)
    return h.hexdigest()
