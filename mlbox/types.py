"""Small shared value types used across layers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
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
