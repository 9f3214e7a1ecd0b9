"""One deployment in detail: how often its shadow disagrees with its primary, its latest A/B verdict and quality.

The shadow comparison reads the prediction log over the last 24 hours — only the files whose
cataloged time range meets the window (the pruning of `mlbox monitor`) — in an in-memory DuckDB
with one thread. The sidecar logs each shadow answer as a record with the request id of the answer
it shadowed (serve/predlog/sidecar.py), so the query joins the shadow model's records to the primary
model's records by request id (one record of each per request: a restarted sidecar may log one twice)
and compares them row by row. Requests the canary answered are left out: this is shadow against
primary. Classification counts the rows whose most probable class differs (ties go to the first
class listed, as `serve.shadow.agrees` decides); regression averages the absolute difference.

The A/B verdict and the quality are the newest stored `mlbox monitor ab` and `mlbox monitor quality`
results, as they were stored: nothing is recomputed here.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox import clock

if TYPE_CHECKING:
    from mlbox.console.service import Console

Row = dict[str, Any]
WINDOW_S = 24 * 3600  # the shadow comparison's window: the last day

# one record per request on each side (the first logged), then its rows side by side
PAIRS_SQL = """
WITH log AS (SELECT ts, request_id, model, variant, coalesce(shadow, false) AS shadow, outputs, error FROM {scan}
             WHERE {where} AND deployment = ?),
s AS (SELECT request_id, outputs FROM log WHERE shadow AND model = ? AND error IS NULL AND outputs IS NOT NULL
      QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY ts) = 1),
p AS (SELECT request_id, outputs FROM log WHERE NOT shadow AND variant = 'primary' AND model = ? AND error IS NULL
      AND outputs IS NOT NULL QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY ts) = 1),
paired AS (SELECT p.request_id, json_extract(p.outputs, '$[*]') AS a, json_extract(s.outputs, '$[*]') AS b
           FROM p JOIN s USING (request_id)),
r AS (SELECT request_id, unnest(a) AS a, unnest(b) AS b FROM paired),
typed AS (SELECT request_id,
            CASE WHEN json_type(a) = 'OBJECT' THEN TRY_CAST(a AS MAP(VARCHAR, DOUBLE)) END AS ma,
            CASE WHEN json_type(b) = 'OBJECT' THEN TRY_CAST(b AS MAP(VARCHAR, DOUBLE)) END AS mb,
            CASE WHEN json_type(a) IN ('DOUBLE', 'BIGINT', 'UBIGINT') THEN TRY_CAST(a AS DOUBLE) END AS na,
            CASE WHEN json_type(b) IN ('DOUBLE', 'BIGINT', 'UBIGINT') THEN TRY_CAST(b AS DOUBLE) END AS nb
          FROM r WHERE a IS NOT NULL AND b IS NOT NULL),
top AS (SELECT request_id,
          map_keys(ma)[list_position(map_values(ma), list_max(map_values(ma)))] AS ca,
          map_keys(mb)[list_position(map_values(mb), list_max(map_values(mb)))] AS cb, na, nb FROM typed)
SELECT (SELECT count(*) FROM paired),
       count(*) FILTER (WHERE ca IS NOT NULL AND cb IS NOT NULL),
       count(*) FILTER (WHERE ca IS NOT NULL AND cb IS NOT NULL AND ca <> cb),
       count(*) FILTER (WHERE na IS NOT NULL AND nb IS NOT NULL),
       sum(abs(na - nb)) FILTER (WHERE na IS NOT NULL AND nb IS NOT NULL)
FROM top
"""


def deployment_detail(console: Console, name: str) -> Row:
    """The deployment's shadow comparison (None without a shadow), latest A/B check and quality (None when none)."""
    from mlbox.monitor.records import Records

    console._require("deploy status")
    console._require("monitor history")
    box = console.box
    d = box.deployments.get(name)
    now = clock.now()
    shadow = None
    if d.shadow_model:
        from mlbox.monitor.logread import log_files

        since = now - timedelta(seconds=WINDOW_S)
        files = log_files(box.db, box.paths.home, name, since, now)
        shadow = {
            "model": d.shadow_model, "primary": d.primary_model,
            **compare(files, name, d.shadow_model, d.primary_model, since, now),
            "window": {"last_s": WINDOW_S, "since": clock.iso(since), "until": clock.iso(now)},
        }  # fmt: skip
    latest = Records(box.db).latest()
    ab, quality = latest.get((name, "ab")), latest.get((name, "quality"))
    return {"deployment": name, "shadow": shadow, "ab": ab_summary(ab), "quality": quality_summary(quality)}


def compare(files: list[Path], deployment: str, shadow: str, primary: str, since: datetime, until: datetime) -> Row:
    """`shadow`'s answers against `primary`'s on the same requests of `files` in [since, until).

    `task` is `classification` when most paired rows are class probabilities, `regression` when most
    are numbers; `disagreement` is then the share of rows whose top class differs, or the mean absolute
    difference; None without paired rows.
    """
    out: Row = {"task": None, "requests": 0, "rows": 0, "disagreement": None}
    if not files:
        return out
    from mlbox.features.offline import connect
    from mlbox.monitor.quality import log_scan, window_sql

    where, params = window_sql(since, until)
    con = connect(1)  # one thread: the TUI must not take the cores `mlbox serve` answers on
    try:
        found = con.execute(PAIRS_SQL.format(scan=log_scan(con, files), where=where),
                            [*params, deployment, shadow, primary]).fetchone()  # fmt: skip
    finally:
        con.close()
    assert found is not None
    requests, n_class, differ, n_reg, abs_sum = found
    out["requests"] = int(requests or 0)
    if n_class or n_reg:
        if int(n_class) >= int(n_reg):
            out.update(task="classification", rows=int(n_class), disagreement=int(differ) / int(n_class))
        else:
            out.update(task="regression", rows=int(n_reg), disagreement=finite(float(abs_sum) / int(n_reg)))
    return out


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value is unknown."""
    return value if value is not None and math.isfinite(value) else None


def ab_summary(result: Row | None) -> Row | None:
    """The stored A/B check as the screen shows it: verdict, metric, each side, the interval, rows, when."""
    if result is None:
        return None
    primary, canary = result.get("primary") or {}, result.get("canary") or {}
    rows = [side.get("n") for side in (primary, canary) if isinstance(side.get("n"), int)]
    return {
        "verdict": str(result.get("verdict") or ""), "metric": result.get("metric"), "direction": result.get("direction"),
        "primary": {"model": primary.get("model"), "n": primary.get("n"), "value": primary.get("value")},
        "canary": {"model": canary.get("model"), "n": canary.get("n"), "value": canary.get("value")},
        "difference": result.get("difference"), "ci_low": result.get("ci_low"), "ci_high": result.get("ci_high"),
        "p_value": result.get("p_value"),
        "confidence": result.get("confidence"), "rows": sum(rows) if rows else None,
        "more_labels_needed": result.get("more_labels_needed"), "reason": result.get("reason") or "",
        "checked_at": result.get("checked_at") or "", "window": result.get("window") or {},
    }  # fmt: skip


def quality_summary(result: Row | None) -> Row | None:
    """The stored quality check: per variant its model, labelled rows, coverage, status and metrics."""
    if result is None:
        return None
    keys = ("model", "rows", "labelled", "coverage", "status", "metrics")
    variants = {str(v): {k: q.get(k) for k in keys} for v, q in (result.get("variants") or {}).items() if isinstance(q, dict)}
    return {"task": result.get("task"), "checked_at": result.get("checked_at") or "", "variants": variants}
