"""Request bodies checked against a model's signature, and encoded straight to the model's float matrix.

Every problem is a 4xx `MlboxError` naming the field and what to fix; nothing in a request
is ever evaluated or unpickled. JSON's non-standard NaN/Infinity literals and strings that are
not Unicode text (a lone surrogate escape such as "\\ud800") are refused at parse time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from mlbox.errors import PayloadTooLarge, UsageError, ValidationError
from mlbox.flavors.signature import Signature

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; send null for a missing value")


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)  # about 5x faster than json.loads on a typical request
    except orjson.JSONDecodeError:
        pass  # the standard parser names the problem; it also reads what orjson refuses (1e999, lone surrogates)
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise UsageError("request body is not UTF-8 text") from None
    except RecursionError:
        raise UsageError("malformed JSON: nested too deeply") from None
    except ValueError as exc:
        raise UsageError(f"malformed JSON: {exc}") from None
    _check_text(value)
    return value


def _check_text(value: Any) -> None:
    """Refuse a string (or key) holding a lone surrogate: it is no Unicode text, and would fail later as UTF-8."""
    stack = [value]  # iterative: the parser already bounded the depth, this keeps the check off the C stack
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(
                        f"invalid Unicode in a JSON string: {item!r:.40}", hint="a lone surrogate escape (\\ud800-\\udfff) is not text"
                    ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def predict_request(body: Any, max_rows: int) -> tuple[str, list[Mapping[str, Any]]]:
    """('rows' | 'entities', the list) from a predict body."""
    if not isinstance(body, dict):
        raise UsageError('the body must be a JSON object: {"rows": [...]} or {"entities": [...]}')
    kinds = [k for k in ("rows", "entities") if k in body]
    extra = sorted(set(body) - {"rows", "entities"})
    if extra:
        raise ValidationError(f"unknown key {extra[0]!r} in the body", hint='send {"rows": [...]} or {"entities": [...]}')
    if len(kinds) != 1:
        raise UsageError('send exactly one of "rows" or "entities"')
    items = body[kinds[0]]
    if not isinstance(items, list) or not items:
        raise ValidationError(f'"{kinds[0]}" must be a non-empty list of objects')
    if len(items) > max_rows:
        raise PayloadTooLarge(f"{len(items)} rows in one request; at most {max_rows}", hint="split the request (serve.max_rows)")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(f'{kinds[0]}[{i}] must be an object of field: value')
    return kinds[0], items


def encode_rows(
    signature: Signature, rows: Sequence[Mapping[str, Any]], where: str = "rows", allow_null: bool = False,
    *, extra: str | None = None, levels: bool = False,
) -> np.ndarray:  # fmt: skip
    """Float32 matrix for `rows`, validating every field against the signature.

    `allow_null` accepts nulls in any field (online features of an unknown entity are null;
    every flavor reads NaN as missing). `extra` names the one field a row may carry that is
    not a model input (the deployment's sticky key): a string, an integer or null, never encoded.
    """
    plain = encode_plain(signature, rows, extra=extra)
    return plain if plain is not None else encode_checked(signature, rows, where, allow_null, extra=extra, levels=levels)


def sticky_extra(signature: Signature, sticky_key: str | None) -> str | None:
    """The sticky key when it is not one of the model's inputs (a request row may then carry it), else None."""
    return None if sticky_key is None or sticky_key in signature.layout[0] else sticky_key


def without(rows: Sequence[Mapping[str, Any]], extra: str) -> list[Mapping[str, Any]]:
    """`rows` without the field `extra`: the model's inputs exactly (a row without it is kept as it is)."""
    return [{k: v for k, v in row.items() if k != extra} if extra in row else row for row in rows]


def encode_checked(
    signature: Signature, rows: Sequence[Mapping[str, Any]], where: str = "rows", allow_null: bool = False,
    *, extra: str | None = None, levels: bool = False,
) -> np.ndarray:  # fmt: skip
    """`encode_rows` field by field: the first problem raises a ValidationError naming the row and the field."""
    columns = signature.columns
    known = {c.name for c in columns}
    allowed = known if extra is None else known | {extra}
    out = np.empty((len(rows), len(columns)), dtype=np.float32)
    for i, row in enumerate(rows):
        if len(row) > len(columns) or not known.issuperset(row):
            unknown = sorted(set(row) - allowed)
            if unknown:
                takes = ", ".join(sorted(known)) + ("" if extra is None else f" (and the sticky key {extra!r})")
                raise ValidationError(f"{where}[{i}]: unknown field {unknown[0]!r}", hint=f"the model takes {takes}")
            if extra is not None and extra in row:
                key = row[extra]
                if isinstance(key, bool) or not (key is None or isinstance(key, (str, int))):
                    raise ValidationError(
                        f"{where}[{i}]: sticky key {extra!r} must be a string or an integer, got {type(key).__name__}"
                    )
        for j, col in enumerate(columns):
            if col.name not in row:
                raise ValidationError(f"{where}[{i}]: missing field {col.name!r}")
            value = row[col.name]
            if value is None:
                if not (col.nullable or allow_null):
                    raise ValidationError(f"{where}[{i}]: field {col.name!r} may not be null (it never was in training)")
                out[i, j] = math.nan
            elif col.kind == "numeric":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValidationError(f"{where}[{i}]: field {col.name!r} must be a number, got {type(value).__name__}")
                try:
                    number = float(value)
                except OverflowError:
                    number = math.inf
                if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
                    raise ValidationError(f"{where}[{i}]: field {col.name!r} is out of range (finite float32 values only)")
                out[i, j] = number
            else:
                if col.dtype == "bool" and isinstance(value, bool):
                    value = str(value)
                elif not isinstance(value, str):
                    raise ValidationError(f"{where}[{i}]: field {col.name!r} must be a string, got {type(value).__name__}")
                code = signature.index[col.name].get(value)
                if code is None and levels:
                    raise ValidationError(
                        f"{where}[{i}]: field {col.name!r} must be one of {', '.join(map(repr, col.levels))}, got {value!r}",
                        hint="the levels seen in training",
                    )
                out[i, j] = math.nan if code is None else code
    return out


def encode_plain(signature: Signature, rows: Sequence[Mapping[str, Any]], *, extra: str | None = None) -> np.ndarray | None:
    """The matrix when every row is plainly valid (exactly the fields, finite float32 numbers, strings), else None.

    The common case, checked in one pass; anything else goes through the field-by-field
    checks of `encode_checked`, which name the problem. A row may also carry `extra` (the
    sticky key, when it is not a model input) holding a string or an integer.
    """
    names, numeric, categorical = signature.layout
    index = signature.index
    width = len(names)
    matrix = []
    try:
        for row in rows:
            if len(row) != width:
                if extra is None or len(row) != width + 1 or type(row[extra]) not in (str, int):
                    return None
            values = [row[name] for name in names]
            for j in numeric:
                value = values[j]
                kind = type(value)
                if (kind is not float and kind is not int) or not -FLOAT32_MAX <= value <= FLOAT32_MAX:
                    return None
            for j in categorical:
                value = values[j]
                if type(value) is not str:
                    return None
                code = index[names[j]].get(value)
                if code is None:
                    return None  # an unseen level: encode_checked refuses it (levels=True) or reads it as missing
                values[j] = code
            matrix.append(values)
    except KeyError:
        return None
    return np.array(matrix, dtype=np.float32)
