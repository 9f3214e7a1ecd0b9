"""One monitoring check in full, for the Monitoring screen's detail: each feature's drift with its severity, the
histograms it was judged on, and the deployment's drift and quality over time."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlbox.errors import NotFound

if TYPE_CHECKING:
    from mlbox.console.service import Console

HISTORY = 30  # checks of each kind in the over-time series
WATCH_PSI = 0.1  # the usual "moderate shift" band of the population stability index, below any drift threshold

Row = dict[str, Any]


def check_detail(console: Console, check_id: int) -> Row:
    """The check `check_id`: per variant, each feature's severity (`drift`, `watch`, `ok`, or why it was not judged),
    its tests and histogram; and the deployment's last HISTORY drift shares and quality metrics, oldest first."""
    from mlbox.monitor.records import Records

    console._require("monitor history")
    records = Records(console.box.db)
    check = records.check(check_id)
    if check is None:
        raise NotFound(f"no monitoring check {check_id}", hint="the Monitoring screen (7) lists the stored checks")
    name = str(check["deployment"])
    variants = {}
    for variant, v in (check.get("variants") or {}).items():
        features = [_feature(n, f) for n, f in (v.get("features") or {}).items() if isinstance(f, dict)]
        features.sort(key=lambda f: (SEVERITY_ORDER.get(f["severity"], 3), f["name"]))
        variants[variant] = {"model": v.get("model", ""), "rows": v.get("rows"), "drifted": bool(v.get("drifted")),
                             "share": v.get("share"), "features": features}  # fmt: skip
    drift = [
        {"id": c["id"], "checked_at": c.get("checked_at", ""), "variant": variant, "share": _num(v.get("share")),
         "drifted": bool(v.get("drifted"))}
        for c in records.checks(name, "drift", HISTORY) for variant, v in (c.get("variants") or {}).items()
    ]  # fmt: skip
    quality = [
        {"id": c["id"], "checked_at": c.get("checked_at", ""), "variant": variant,
         "metrics": {k: _num(x) for k, x in (v.get("metrics") or {}).items() if isinstance(x, (int, float))}}
        for c in records.checks(name, "quality", HISTORY) for variant, v in (c.get("variants") or {}).items()
        if isinstance(v, dict)
    ]  # fmt: skip
    return {"id": check_id, "deployment": name, "kind": check["kind"], "checked_at": check.get("checked_at", ""),
            "checked_by": check.get("checked_by"), "verdict": check.get("verdict"), "variants": variants,
            "history": {"drift": drift, "quality": quality}}  # fmt: skip


SEVERITY_ORDER = {"drift": 0, "watch": 1, "ok": 2}


def severity(feature: Row) -> str:
    """`drift` as the check judged it; `watch` when judged fine but its PSI is in the moderate-shift band; `ok`;
    otherwise the check's own status word (e.g. too few rows, ignored)."""
    status = str(feature.get("status") or "")
    if status == "drift" or feature.get("drifted"):
        return "drift"
    if status == "ok":
        psi = ((feature.get("tests") or {}).get("psi") or {}).get("value")
        return "watch" if isinstance(psi, (int, float)) and psi >= WATCH_PSI else "ok"
    return status or "unknown"


def _feature(name: str, f: Row) -> Row:
    tests = f.get("tests") or {}
    hist = f.get("histogram") or {}
    return {
        "name": name, "severity": severity(f), "rows": f.get("rows"), "null_rate": _num(f.get("null_rate")),
        "psi": _num((tests.get("psi") or {}).get("value")), "ks": _num((tests.get("ks") or {}).get("statistic")),
        "p_value": _num((tests.get("ks") or tests.get("chi2") or {}).get("p_value")),
        "js": _num((tests.get("js") or {}).get("value")), "reason": f.get("reason") or "",
        "histogram": {"bins": [str(b) for b in hist.get("bins") or []],
                      "reference": [_num(x) or 0.0 for x in hist.get("reference") or []],
                      "current": [_num(x) or 0.0 for x in hist.get("current") or []]},
    }  # fmt: skip


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
