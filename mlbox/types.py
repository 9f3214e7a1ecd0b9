"""Small shared value types used across layers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mlbox.errors import UsageError

JSON = dict[str, Any]
Role = Literal["admin", "ml-engineer", "data-scientist", "viewer", "service"]
ROLES: tuple[Role, ...] = ("admin", "ml-engineer", "data-scientist", "viewer", "service")

# Names that become paths, SQL identifiers or URL segments.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
USER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(value: str, what: str = "name", pattern: re.Pattern[str] = NAME_PATTERN) -> str:
    """Return `value` if it matches the strict name pattern, else raise a UsageError saying what fits."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise UsageError(
            f"invalid {what} {value!r}",
            hint="use lowercase letters, digits and '_', starting with a letter, at most 63 characters"
            if pattern is NAME_PATTERN
            else "use letters, digits, '.', '_' and '-', at most 64 characters",
        )
    return value


# C0/C1 controls (ESC starts ANSI/OSC sequences), bidi overrides and isolates, zero-width characters.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def printable(value: object) -> str:
    """`value` as text safe to print on a terminal: control, bidi and zero-width characters as `\\xNN`/`\\uNNNN`."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


MAX_TEXT_FILE_BYTES = 16 * 1024 * 1024  # a YAML/JSON file mlbox reads whole: larger is a mistake or an attack


def read_text_file(path: Path, what: str, max_bytes: int = MAX_TEXT_FILE_BYTES) -> str:
    """A small UTF-8 file's text, or one UsageError: missing, not a regular file (a device would never end),
    too large, too long a name, or not UTF-8 — never a raw OSError or MemoryError."""
    shown = printable(path)
    try:
        if not path.is_file():
            raise UsageError(f"{what} {shown} not found", hint="it must be a regular file")
        if path.stat().st_size > max_bytes:
            raise UsageError(f"{what} {shown} is larger than {max_bytes:,} bytes")
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)  # the size may have grown since stat
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, ELOOP, EACCES, a NUL byte
        raise UsageError(f"cannot read {what} {shown}: {printable(getattr(exc, 'strerror', None) or exc)}") from None
    if len(data) > max_bytes:
        raise UsageError(f"{what} {shown} is larger than {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {shown} is not UTF-8 text") from None


@dataclass(frozen=True)
class Actor:
    """Who is acting: a box user, their role, and how they were identified."""

    name: str
    role: Role
    via: Literal["os", "token", "system"] = "os"


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION_S = 100 * 365 * 86400  # longer is a typo, and would overflow date arithmetic


def check_keys(data: Any, allowed: set[str], where: str) -> None:
    """Raise a UsageError unless `data` is a mapping whose keys are all in `allowed`."""
    if not isinstance(data, Mapping):
        raise UsageError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}", hint=f"allowed: {', '.join(sorted(allowed))}")


def parse_duration(text: str) -> int:
    """Seconds in a duration such as `90s`, `15m`, `12h`, `30d`, `2w`."""
    match = _DURATION.match(text or "")
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"invalid duration {text!r}", hint="use a positive number and a unit: 90s, 15m, 12h, 30d, 2w")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION_S:
        raise UsageError(f"duration {text!r} is longer than 100 years", hint="use at most 5200w")
    return seconds
