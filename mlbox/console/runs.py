"""One run in detail for the TUI's comparison: its fields, params, tags, latest metrics and metric curves.

Everything returned is plain JSON (the same dict reaches a remote TUI through `mlbox serve`): NaN and
infinity become None wherever they are (params and tags are stored as JSON and may hold them), and each
metric's history is at most MAX_POINTS `[step, value]` pairs, evenly subsampled, its first and last
point always kept, so a run that logged a million steps costs a plot's worth of points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlbox.console.service import Console

Row = dict[str, Any]
MAX_POINTS = 2000  # per metric: more than a terminal plot's columns, even at 4k wide
FIELDS = ("id", "experiment", "name", "status", "user", "started_at", "ended_at", "duration_s", "device",
          "dataset_fingerprint", "code_rev", "code_dirty", "env_hash", "feature_views", "error")  # fmt: skip


def run_detail(console: Console, run_id: str) -> Row:
    """The run `run_id` (or a unique prefix of it), as `mlbox runs show` reads it, with every metric's history."""
    console._require("runs show")
    tracking = console.box.tracking
    info = tracking.run(run_id)
    record = info.as_dict()
    latest = tracking.latest_metrics([info.id])[info.id]
    history = {key: [[step, value] for step, value in subsample(tracking.metric_history(info.id, key))] for key in sorted(latest)}
    out: Row = {field: record[field] for field in FIELDS}
    out.update(params=record["params"], tags=record["tags"], metrics={k: latest[k] for k in sorted(latest)}, history=history)
    cleaned = clean(out)
    assert isinstance(cleaned, dict)
    return cleaned


def subsample(points: Sequence[tuple[int, float | None]], cap: int = MAX_POINTS) -> list[tuple[int, float | None]]:
    """At most `cap` points, evenly spread over `points`, the first and the last included."""
    n = len(points)
    if n <= cap:
        return list(points)
    if cap < 2:
        return [points[-1]] if cap == 1 else []
    return [points[round(i * (n - 1) / (cap - 1))] for i in range(cap)]  # distinct indices: n > cap


def clean(value: Any) -> Any:
    """`value` as JSON that survives a round trip unchanged: NaN/inf as None, tuples as lists, keys as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
