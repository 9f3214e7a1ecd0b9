"""A byte range of a job's log for the TUI to follow: its tail, or what was written after an offset.

The log is the file the worker named in the job's record (`jobs.log_path`, under `logs/jobs/` of the
box); a path that resolves outside the box is refused, a job with no log yet has an empty one. Every
range is at most MAX_LIMIT bytes and decoded as UTF-8 with `errors="replace"`; it never ends inside a
character (an unfinished one is left for the next read), and the tail (`offset=-1`) starts at a line
boundary unless one line is longer than the range. `end` is where the next read starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox.errors import PermissionDenied, UsageError

if TYPE_CHECKING:
    from mlbox.console.service import Console

Row = dict[str, Any]
MAX_LIMIT = 1 << 20  # bytes in one answer, however large a limit is asked for
ENDED = ("succeeded", "failed", "cancelled", "timed_out")


def job_log(console: Console, job_id: int, offset: int = -1, limit: int = 65536) -> Row:
    """`{"job", "status", "size", "start", "end", "text", "done"}`: the log's bytes [start, end) of its `size` now.

    `offset=-1` (or an offset past the end: the log was replaced) reads the last `limit` bytes."""
    console._require("jobs logs")
    if offset < -1:
        raise UsageError(f"offset {offset} is not a byte offset", hint="-1 reads the tail, 0 the start")
    if limit < 1:
        raise UsageError(f"limit {limit} must be at least 1")
    limit = min(limit, MAX_LIMIT)
    job = console.box.jobs.get(job_id)
    out: Row = {"job": job.id, "status": job.status, "size": 0, "start": 0, "end": 0, "text": "",
                "done": job.status in ENDED}  # fmt: skip
    if not job.log_path:
        return out
    path = inside(console.box.paths.home, Path(job.log_path))
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            tail = offset == -1 or offset > size
            start = max(0, size - limit) if tail else offset
            fh.seek(start)
            data = fh.read(min(limit, size - start))
    except FileNotFoundError:
        return out  # claimed, not started yet, or the log was removed
    if tail and start > 0:
        cut = data.find(b"\n")
        cut = cut + 1 if 0 <= cut < len(data) - 1 else _char_start(data)
        start, data = start + cut, data[cut:]
    data = data[: _complete(data)]
    out.update(size=size, start=start, end=start + len(data), text=data.decode("utf-8", errors="replace"))
    return out


def inside(home: Path, path: Path) -> Path:
    """`path` resolved (links followed), refused unless it lies inside the box's `home`."""
    root = home.resolve()
    resolved = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not resolved.is_relative_to(root):
        raise PermissionDenied("the job's log lies outside the box", hint="jobs log under logs/jobs/ of the box")
    return resolved


def _char_start(data: bytes) -> int:
    """How many UTF-8 continuation bytes open `data` (the tail of a character cut off by the range)."""
    n = 0
    while n < min(3, len(data)) and 0x80 <= data[n] < 0xC0:
        n += 1
    return n


def _complete(data: bytes) -> int:
    """The length of `data` without an unfinished UTF-8 character at its end (the writer may be inside one)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)  # ASCII: complete
        if byte >= 0xC0:  # a lead byte: complete when the bytes it needs are there
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)  # continuation bytes only: not UTF-8 here, replaced when decoded
