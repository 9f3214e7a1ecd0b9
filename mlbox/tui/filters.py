"""The one filter grammar of every TUI table: `text`, `!text`, `key=value`, `key!=value`, `auc>0.9` (terms ANDed).

A comparison's value is a number, or an ISO-8601 time (`started_at>=2026-12-01T06:00:00Z`): then cells are
compared as times, UTC when they carry no offset.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from mlbox.errors import UsageError

OPERATORS = ("!=", ">=", "<=", "=", ">", "<")
# a key term is COLUMN OP VALUE; anything else is free text (so "a b" searches two words, both required)
_KEY_TERM = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_.]*)(?P<op>!=|>=|<=|=|>|<)(?P<value>.*)$", re.S)
HINT = "filters: /text  /!text  /key=value  /key!=value  /auc>0.9  (terms joined by spaces must all match)"


@dataclass(frozen=True)
class Term:
    """One condition: free text (`key` None) or `key op value`; `negate` only for free text (`!text`)."""

    key: str | None
    op: str
    value: str
    negate: bool = False

    def matches(self, row: Mapping[str, object]) -> bool:
        if self.key is None:
            needle = self.value.casefold()
            found = any(needle in _text(v).casefold() for v in row.values())
            return found != self.negate
        cell = row.get(self.key)
        if self.op in ("=", "!="):
            equal = _text(cell).casefold() == self.value.casefold()
            return equal if self.op == "=" else not equal
        if _is_number(self.value):
            number, bound = _number(cell), float(self.value)
        else:  # a time: compared as seconds since the epoch
            moment, limit = _time(cell), _time(self.value)
            number, bound = (None if moment is None else moment.timestamp()), (limit.timestamp() if limit else 0.0)
        if number is None:
            return False  # a missing, non-numeric or non-time cell never satisfies a comparison
        return {">": number > bound, ">=": number >= bound, "<": number < bound, "<=": number <= bound}[self.op]


@dataclass(frozen=True)
class Filter:
    """A parsed filter: every term must match; the empty filter matches everything."""

    text: str
    terms: tuple[Term, ...] = ()

    def matches(self, row: Mapping[str, object]) -> bool:
        return all(term.matches(row) for term in self.terms)

    def apply(self, rows: Iterable[Mapping[str, object]]) -> list[Mapping[str, object]]:
        return [row for row in rows if self.matches(row)]

    def __bool__(self) -> bool:
        return bool(self.terms)


NO_FILTER = Filter("")


def parse(text: str, columns: Iterable[str] | None = None) -> Filter:
    """Parse what follows the `/`; with `columns`, a `key` term must name one of them (UsageError otherwise).

    Quote a term to search for text holding spaces or an operator: `/"a=b"` or `/'two words'`.
    """
    text = text.strip()
    if text.startswith("/"):
        text = text[1:]
    try:
        words = shlex.split(text, posix=True)
    except ValueError as exc:
        raise UsageError(f"bad filter {text!r}: {exc}", hint=HINT) from None
    quoted = _quoted_words(text)
    known = None if columns is None else list(columns)
    terms = []
    for i, word in enumerate(words):
        match = None if quoted[i] else _KEY_TERM.match(word)
        if match is None:
            negate = word.startswith("!") and not quoted[i]
            value = word[1:] if negate else word
            if value:
                terms.append(Term(None, "~", value, negate))
            continue
        key, op, value = match["key"], match["op"], match["value"]
        if known is not None and key not in known:
            raise UsageError(f"no column {key!r} to filter on", hint="columns: " + ", ".join(known))
        if op not in ("=", "!=") and not _is_number(value) and _time(value) is None:
            raise UsageError(f"{key}{op}{value}: {op} compares numbers or ISO times, {value!r} is neither", hint=HINT)
        terms.append(Term(key, op, value))
    return Filter(text, tuple(terms))


def _quoted_words(text: str) -> list[bool]:
    """For each shlex word of `text`, whether it began with a quote (then it is always free text)."""
    lexer = shlex.shlex(text, posix=False, punctuation_chars=False)
    lexer.whitespace_split = True
    return [w[:1] in ("'", '"') for w in lexer]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _time(value: object) -> datetime | None:
    """An ISO-8601 date or time as an aware datetime (naive ones are UTC), else None."""
    if not isinstance(value, str) or len(value) < 10 or not value[:4].isdigit():
        return None  # "2026-12-01" at the least: plain numbers and words are not times
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).rstrip("%")
    return float(text) if _is_number(text) else None


def is_time(text: str) -> bool:
    """Whether `text` is an ISO-8601 date or time the grammar compares as a time."""
    return _time(text) is not None
