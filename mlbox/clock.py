"""Wall-clock time in one place, so tests can move it and every timestamp is aware UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def iso(moment: datetime | None = None) -> str:
    """ISO-8601 UTC text with microseconds, sortable as a string (`2026-11-27T10:04:35.123456Z`)."""
    moment = now() if moment is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    """Inverse of `iso`; also accepts any ISO-8601 text with an offset."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def monotonic() -> float:
    return time.monotonic()
