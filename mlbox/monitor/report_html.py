"""HTML pieces of the monitoring report: the inline stylesheet, escaping, number formats and tolerant readers of result dicts."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

VARIANT_ORDER = ("primary", "canary", "shadow")

# system fonts only: the page must not fetch anything
CSS = """
:root{--fg:#1f2933;--muted:#616e7c;--line:#d9dee4;--good:#1f7a45;--bad:#b3261e;--bg-good:#e3f4ea;--bg-bad:#fbe4e2}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);
margin:0 auto;padding:24px;max-width:1280px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}h4{font-size:13px;margin:0 0 4px;word-break:break-all}
.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0}dt{color:var(--muted)}dd{margin:0}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px}th,td{border-bottom:1px solid var(--line);padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f5f7fa;font-weight:600}td small{color:var(--muted)}
table.verdicts td:nth-child(n+4):nth-child(-n+11){font-variant-numeric:tabular-nums;white-space:nowrap}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;background:#eef1f4;color:var(--muted)}
.badge.good{background:var(--bg-good);color:var(--good)}.badge.bad{background:var(--bg-bad);color:var(--bad)}
.verdict{font-size:16px}.verdict .badge{font-size:15px;padding:1px 10px}
.note{color:var(--muted);font-style:italic}.reason{color:var(--muted);font-size:12px;margin:2px 0 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px}
figure.plot{margin:0}figure.plot svg{width:100%;height:auto;display:block}figure.wide{max-width:900px}
.key i{display:inline-block;width:12px;height:10px;margin:0 4px 0 12px;vertical-align:baseline}
nav{margin:12px 0}footer{margin-top:40px;color:var(--muted);font-size:12px}
"""

# the key of every distribution plot (colours as in mlbox.monitor.plots), shown once per variant
KEY = (
    '<p class="key">Bars:<i style="background:#9aa5b1"></i>reference (the model\'s training data)'
    '<i style="background:#2f6fbd"></i>current window<i style="background:#c8372d"></i>current, drifted</p>'
)


def esc(value: object) -> str:
    """HTML-escaped text of any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def dict_of(value: object) -> dict[str, Any]:
    """`value` when it is a mapping, else an empty dict: stored results are read without trusting their shape."""
    return dict(value) if isinstance(value, Mapping) else {}


def list_of(value: object) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def to_float(value: object) -> float | None:
    """A finite float, or None for missing, NaN, infinite or non-numeric values (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def number(value: object) -> str:
    """Three significant digits; integers in full; very small or large values in exponent form; "–" when missing."""
    f = to_float(value)
    if f is None:
        return "–"
    if f.is_integer() and abs(f) < 1e15:
        return f"{int(f):,}"
    if abs(f) < 1e-3 or abs(f) >= 1e6:
        return f"{f:.2e}"
    return f"{f:.3g}"


def percent(value: object) -> str:
    f = to_float(value)
    return "–" if f is None else f"{f * 100:.1f}%"


def badge(text: str, tone: str) -> str:
    """A coloured label; `tone` is one of good/bad/muted, never data."""
    return f'<span class="badge {tone if tone in ("good", "bad") else "muted"}">{esc(text)}</span>'


def table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """A table from cells that are already HTML (escaped by the caller)."""
    attr = f' class="{cls}"' if cls else ""
    ths = "".join(f"<th>{h}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{attr}><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>"


def parse_time(value: object) -> datetime | None:
    """An ISO timestamp as naive UTC (what matplotlib's date axis expects), or None when it does not parse."""
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo is not None else t


def variant_order(variants: Mapping[str, Any]) -> list[str]:
    """primary, canary, shadow, then any other variant by name."""
    known = [v for v in VARIANT_ORDER if v in variants]
    return known + sorted(str(v) for v in variants if v not in VARIANT_ORDER)


def _duration(seconds: float) -> str:
    # whole days from two days on ("7d"), else hours ("24h", "36h"), minutes, seconds
    for unit, size, least in (("d", 86400, 2 * 86400), ("h", 3600, 3600), ("m", 60, 60)):
        if seconds >= least and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def window_text(window: Mapping[str, Any]) -> str:
    """`{"last_s", "since", "until", "last_rows"}` in words: "last 24h", "since … until …", "newest 1,000 rows"."""
    parts = []
    last = to_float(window.get("last_s"))
    if last is not None:
        parts.append(f"last {_duration(last)}")
    if window.get("since"):
        parts.append(f"since {window['since']}")
    if window.get("until"):
        parts.append(f"until {window['until']}")
    rows = to_float(window.get("last_rows"))
    if rows is not None:
        parts.append(f"newest {number(rows)} rows")
    return ", ".join(parts) or "the whole log"
