"""L0 foundation: the error tree, shared value types and the clock."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mlbox import clock, errors
from mlbox.types import check_name, parse_duration

# errors -----------------------------------------------------------------------------

EXPECTED = {
    "MlboxError": (500, "internal", 1),
    "UsageError": (400, "bad_request", 2),
    "ValidationError": (422, "invalid", 2),
    "SettingsError": (400, "bad_setting", 2),
    "PayloadTooLarge": (413, "too_large", 2),
    "NotFound": (404, "not_found", 3),
    "Conflict": (409, "conflict", 4),
    "AuthError": (401, "unauthenticated", 5),
    "PermissionDenied": (403, "forbidden", 5),
    "Overloaded": (429, "overloaded", 6),
    "StoreError": (500, "store", 7),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_error_attributes(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.MlboxError)
    assert (cls.status, cls.code, cls.exit_code) == EXPECTED[name]


def test_error_tree_is_complete_and_codes_unique() -> None:
    assert sorted(errors.__all__) == sorted(EXPECTED) == errors.__all__
    assert len({getattr(errors, n).code for n in EXPECTED}) == len(EXPECTED)
    assert issubclass(errors.PermissionDenied, errors.AuthError)
    assert issubclass(errors.SettingsError, errors.UsageError)
    assert issubclass(errors.ValidationError, errors.UsageError)


def test_error_message_and_hint() -> None:
    exc = errors.NotFound("no thing", hint="try another")
    assert (exc.message, exc.hint, str(exc)) == ("no thing", "try another", "no thing (try another)")
    assert str(errors.Conflict("taken")) == "taken"


def test_errors_module_imports_nothing_heavy() -> None:
    tree = ast.parse(Path(errors.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__"}, imported


# types ------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "churn_v2", "x" * 63])
def test_check_name_accepts(good: str) -> None:
    assert check_name(good) == good


@pytest.mark.parametrize("bad", ["", "A", "1abc", "a-b", "a b", "x" * 64, "a/b", "a;drop"])
def test_check_name_rejects(bad: str) -> None:
    with pytest.raises(errors.UsageError, match="invalid name"):
        check_name(bad)


@pytest.mark.parametrize(
    "text, seconds", [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("2w", 1209600), (" 1d ", 86400)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "0d", "5", "d", "1y", "-1d", "1.5h"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(errors.UsageError, match="invalid duration"):
        parse_duration(bad)


# clock ------------------------------------------------------------------------------


def test_now_is_aware_utc() -> None:
    assert clock.now().tzinfo is not None and clock.now().utcoffset() == timedelta(0)


def test_iso_roundtrip_and_sorting() -> None:
    moment = datetime(2026, 11, 27, 10, 4, 35, 123456, tzinfo=UTC)
    assert clock.iso(moment) == "2026-11-27T10:04:35.123456Z"
    assert clock.parse_iso(clock.iso(moment)) == moment
    other_zone = moment.astimezone(timezone(timedelta(hours=5)))
    assert clock.iso(other_zone) == clock.iso(moment)
    assert clock.parse_iso("2026-11-27T10:04:35") == moment.replace(microsecond=0)
    earlier, later = clock.iso(moment), clock.iso(moment + timedelta(microseconds=1))
    assert earlier < later


def test_iso_follows_monkeypatched_now(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    monkeypatch.setattr(clock, "now", lambda: fixed)
    assert clock.iso() == "2031-01-02T03:04:05.000000Z"
