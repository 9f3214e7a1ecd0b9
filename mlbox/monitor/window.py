"""Which part of the prediction log a check reads: the last duration, a since/until range, or the last N rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from mlbox import clock
from mlbox.errors import UsageError
from mlbox.types import MAX_DURATION_S, parse_duration

MAX_ROWS = 10**12  # a row cap beyond any log (and beyond DuckDB's LIMIT)


@dataclass(frozen=True, kw_only=True)
class Window:
    """A window of the log: `last_s` seconds back from now, or `since`/`until` (UTC), optionally the last `last_rows` rows.

    With nothing set it is the last 24 hours. `last_rows` caps the rows read (the newest win)
    inside whatever time range is set (none: the whole log).
    """

    last_s: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    last_rows: int | None = None

    def __post_init__(self) -> None:
        if self.last_s is not None and (self.since is not None or self.until is not None):
            raise UsageError("a window is either --last or --since/--until, not both")
        if self.last_rows is not None and not 1 <= self.last_rows <= MAX_ROWS:
            raise UsageError(f"--last-rows must be between 1 and {MAX_ROWS:,}")
        if self.last_s is not None and not 0 < self.last_s <= MAX_DURATION_S:
            raise UsageError("--last must be a positive duration of at most 100 years")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise UsageError("--since must be before --until")

    @classmethod
    def parse(cls, last: str | None = None, since: str | None = None, until: str | None = None,
              last_rows: int | None = None) -> Window:  # fmt: skip
        """From the CLI's or a policy's text: `--last 24h`, `--since 2026-11-01T00:00`, `--last-rows 10000`."""
        if last is None and since is None and until is None and last_rows is None:
            last = "24h"
        return cls(
            last_s=float(parse_duration(last)) if last is not None else None,
            since=_moment(since, "--since") if since is not None else None,
            until=_moment(until, "--until") if until is not None else None,
            last_rows=last_rows,
        )

    def bounds(self, now: datetime | None = None) -> tuple[datetime | None, datetime | None]:
        """(since, until) in UTC for a check run at `now`; None is open."""
        if self.last_s is not None:
            end = now or clock.now()
            return end - timedelta(seconds=self.last_s), end
        return self.since, self.until

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        since, until = self.bounds(now)
        return {
            "last_s": self.last_s,
            "since": clock.iso(since) if since else None,
            "until": clock.iso(until) if until else None,
            "last_rows": self.last_rows,
        }

    def describe(self) -> str:
        if self.last_s is not None:
            text = f"last {_human(self.last_s)}"
        elif self.since or self.until:
            text = f"{clock.iso(self.since) if self.since else '…'} to {clock.iso(self.until) if self.until else 'now'}"
        else:
            text = "whole log"
        return f"{text}, newest {self.last_rows} rows" if self.last_rows else text


def _moment(text: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"invalid {option} {text!r}", hint="write an ISO time like 2026-11-30 or 2026-11-30T12:00:00Z") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _human(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
