"""Request validation as pure functions: the one-pass encoder agrees with the field-by-field one on every row it
accepts and hands every other row over to it; the fast JSON parser falls back to the standard one, which names
the problem (the error cases themselves are the table in _cases.py, run in-process and against a server).
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest

from mlbox.errors import UsageError, ValidationError
from mlbox.flavors.signature import Column, Signature
from mlbox.serve.validation import FLOAT32_MAX, encode_checked, encode_plain, encode_rows, parse_json, sticky_extra, without

SIG = Signature(
    (
        Column("age", "numeric", "int64"),
        Column("spend", "numeric", "float64", nullable=True),
        Column("plan", "categorical", "string", ("basic", "gold", "pro")),
        Column("score", "numeric", "float64"),
        Column("vip", "categorical", "bool", ("False", "True")),
    ),
    "classification",
    "y",
    (0, 1),
)


def random_row(rng: random.Random) -> dict[str, Any]:
    return {
        "age": rng.choice([rng.randint(-10**6, 10**6), 0, -1, 2**31]),
        "spend": rng.choice([rng.uniform(-1e6, 1e6), 0.0, 1e-30, 3.4e38, -3.4e38]),
        "plan": rng.choice(["basic", "gold", "pro"]),
        "score": rng.choice([rng.random(), 5, -2.5e-8]),
        "vip": rng.choice(["True", "False"]),
    }


def test_an_unseen_level_is_refused_when_asked_and_missing_otherwise() -> None:
    """The predict route asks (levels=True: the document's enums); entity lookups and training read it as missing."""
    row = {**GOOD, "plan": "platinum"}
    assert encode_plain(SIG, [row]) is None  # the one-pass encoder hands it to the checked one
    assert math.isnan(encode_checked(SIG, [row])[0, 2])
    with pytest.raises(ValidationError, match="'plan' must be one of 'basic', 'gold', 'pro', got 'platinum'"):
        encode_rows(SIG, [GOOD, row], levels=True)


@pytest.mark.parametrize("seed", range(5))
def test_one_pass_encoder_agrees_with_the_checked_one(seed: int) -> None:
    rng = random.Random(seed)
    rows = [random_row(rng) for _ in range(200)]
    rng.shuffle(rows)
    plain = encode_plain(SIG, rows)
    assert plain is not None
    np.testing.assert_array_equal(plain, encode_checked(SIG, rows))
    assert plain.dtype == np.float32 and plain.shape == (200, 5)


GOOD = {"age": 40, "spend": 12.5, "plan": "gold", "score": 0.5, "vip": "True"}


@pytest.mark.parametrize(
    "change",
    [
        {"spend": None},  # a null the signature allows: the checked encoder handles it
        {"vip": True},  # a JSON boolean for a boolean column
        {"age": True},  # a boolean is not a number
        {"age": "40"},
        {"score": math.inf},
        {"score": 1e39},  # beyond float32
        {"age": 10**400},
        {"plan": 3},
        {"extra": 1},
        {"drop": "plan"},
    ],
    ids=lambda c: next(iter(c)) + "=" + repr(next(iter(c.values())))[:12],
)
def test_anything_unusual_goes_to_the_checked_encoder(change: dict[str, Any]) -> None:
    row = dict(GOOD)
    if "drop" in change:
        row.pop(change["drop"])
    else:
        row.update(change)
    assert encode_plain(SIG, [GOOD, row]) is None
    try:
        expected = encode_checked(SIG, [GOOD, row])
    except ValidationError as exc:
        with pytest.raises(ValidationError) as got:
            encode_rows(SIG, [GOOD, row])
        assert got.value.message == exc.message and "rows[1]" in exc.message
    else:
        np.testing.assert_array_equal(encode_rows(SIG, [GOOD, row]), expected)


def test_the_sticky_key_is_the_one_extra_field_and_is_never_encoded() -> None:
    assert sticky_extra(SIG, "session") == "session" and sticky_extra(SIG, "age") is None and sticky_extra(SIG, None) is None
    plain = encode_rows(SIG, [GOOD])
    rows = [{**GOOD, "session": "s-1"}, {**GOOD, "session": 7}, GOOD, {**GOOD, "session": None}]
    assert encode_plain(SIG, rows[:3], extra="session") is not None  # strings and integers take the one-pass path
    for encoded in (encode_rows(SIG, rows, extra="session"), encode_checked(SIG, rows, extra="session")):
        np.testing.assert_array_equal(encoded, np.repeat(plain, 4, axis=0))
    assert without(rows, "session") == [GOOD] * 4 and without(rows, "session")[2] is GOOD
    for bad, words in (({**GOOD, "session": "s", "user": 1}, "unknown field 'user'"), ({**GOOD, "session": 1.5}, "sticky key"),
                       ({**GOOD, "session": True}, "sticky key"), ({**GOOD, "session": [1]}, "sticky key")):  # fmt: skip
        with pytest.raises(ValidationError, match=words):
            encode_rows(SIG, [GOOD, bad], extra="session")
    with pytest.raises(ValidationError, match="unknown field 'session'"):
        encode_rows(SIG, [rows[0]])  # not a sticky key here: just an unknown field


def test_the_float32_boundary_is_the_same_in_both() -> None:
    edge = [{**GOOD, "score": FLOAT32_MAX}, {**GOOD, "score": -FLOAT32_MAX}]
    plain = encode_plain(SIG, edge)
    assert plain is not None and np.isfinite(plain).all()
    np.testing.assert_array_equal(plain, encode_checked(SIG, edge))


@pytest.mark.parametrize("body", [b'{"rows": [{"a": 1.5, "b": "x", "c": null, "d": [1, 2]}]}', b"[]", b'"\\u00e9"', b"123"])
def test_the_fast_parser_reads_what_the_standard_one_reads(body: bytes) -> None:
    assert parse_json(body) == json.loads(body)


def test_what_the_fast_parser_refuses_the_standard_one_reads_or_names() -> None:
    assert parse_json(b"[1e999]") == [math.inf]  # parsed; the encoder then refuses it as out of range
    # a lone surrogate escape is valid JSON but no text: refused (a 400), never passed on to become a 500
    for body, words in ((b'{"a": NaN}', "NaN"), (b"[Infinity]", "Infinity"), (b"{", "malformed JSON"), (b"\xff", "UTF-8"),
                        (b'["\\ud800"]', "invalid Unicode")):  # fmt: skip
        with pytest.raises(UsageError) as exc:
            parse_json(body)
        assert words in exc.value.message
    with pytest.raises(UsageError, match="nested too deeply"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)
