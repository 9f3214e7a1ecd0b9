"""The Deployments screen's panel under the table: the selected deployment's shadow disagreement, A/B verdict, quality.

Every line is a glyph and words (NO_COLOR reads the same), every value from the box goes through
`printable` into a `Text`, and a missing part is `–`.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from mlbox.types import printable

Row = dict[str, Any]
NONE = "–"
LABEL = 8  # the width of the line labels: `shadow`, `A/B`, `quality`
# an A/B verdict's glyph: better, worse, else inconclusive (no difference detected, not enough labels)
AB_GLYPHS = {"canary better": "✓", "canary worse": "✗"}
QUALITY_METRIC = {"classification": "accuracy", "regression": "rmse"}


def _num(value: object, spec: str = ".3g") -> str:
    return NONE if not isinstance(value, (int, float)) or isinstance(value, bool) else format(value, spec)


def _window(window: Row) -> str:
    seconds = window.get("last_s")
    if not isinstance(seconds, (int, float)):
        return "window"
    return f"{seconds / 3600:g}h" if seconds % 3600 == 0 else f"{seconds:g}s"


def shadow_text(shadow: Row | None) -> str:
    """`shadow churn:2 vs primary churn:1: 4.2% disagree (1,204 rows, 24h)`, or `–` without a shadow."""
    if shadow is None:
        return NONE
    pair = f"{shadow['model']} vs primary {shadow['primary']}"
    span = _window(shadow.get("window") or {})
    value, rows = shadow.get("disagreement"), int(shadow.get("rows") or 0)
    if value is None or not rows:
        return f"{pair}: no answers of both in the last {span}"
    if shadow.get("task") == "regression":
        return f"{pair}: mean |Δ| {_num(value)} ({rows:,} rows, {span})"
    return f"{pair}: {value:.1%} disagree ({rows:,} rows, {span})"


def ab_text(ab: Row | None) -> str:
    """`✓ canary better: accuracy +0.031, 95% CI [+0.012, +0.05] (560 rows)`; `…` for an inconclusive verdict."""
    if ab is None:
        return NONE
    verdict = str(ab.get("verdict") or "unknown")
    text = f"{AB_GLYPHS.get(verdict, '…')} {verdict}"
    if isinstance(ab.get("difference"), (int, float)):
        confidence = ab.get("confidence")
        level = f"{confidence:.0%} " if isinstance(confidence, (int, float)) else ""
        text += (f": {ab.get('metric')} {_num(ab['difference'], '+.3g')}, {level}CI "
                 f"[{_num(ab.get('ci_low'), '+.3g')}, {_num(ab.get('ci_high'), '+.3g')}]")  # fmt: skip
        p = ab.get("p_value")
        if isinstance(p, (int, float)):
            text += f", p {p:.2g}"
    rows = ab.get("rows")
    return text + (f" ({rows:,} rows)" if isinstance(rows, int) else "")


def quality_text(quality: Row | None) -> str:
    """`accuracy: primary 0.912 (150 labelled) · canary 0.93 (120)`: the newest stored quality check per variant."""
    if quality is None:
        return NONE
    metric = QUALITY_METRIC.get(str(quality.get("task")), "accuracy")
    variants = quality.get("variants") or {}
    order = sorted(variants, key=lambda v: (("primary", "canary", "shadow") + (v,)).index(v))
    parts = []
    for i, v in enumerate(order):
        q = variants[v]
        value = (q.get("metrics") or {}).get(metric)
        labelled = q.get("labelled")
        count = "" if not isinstance(labelled, int) else f" ({labelled:,}{' labelled' if i == 0 else ''})"
        parts.append(f"{v} {_num(value)}{count}")
    return f"{metric}: " + " · ".join(parts) if parts else NONE


def detail_lines(detail: Row) -> list[tuple[str, str]]:
    return [("shadow", shadow_text(detail.get("shadow"))), ("A/B", ab_text(detail.get("ab"))),
            ("quality", quality_text(detail.get("quality")))]  # fmt: skip


class DeploymentPanel(Vertical):
    """The selected deployment in detail, one labelled line per part (a long one wraps under its value);
    `border_title` names the deployment."""

    DEFAULT_CSS = """
    DeploymentPanel { height: auto; border-top: solid $primary; padding: 0 1; }
    DeploymentPanel .detail-row { height: auto; }
    DeploymentPanel .detail-label { width: 8; text-style: bold; }
    DeploymentPanel .detail-value { width: 1fr; height: auto; }
    """  # the label's width is LABEL

    PARTS = ("shadow", "A/B", "quality")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deployment: str | None = None  # whose detail (or error) is shown
        self.lines: list[tuple[str, str]] = []

    def compose(self) -> ComposeResult:
        for _ in self.PARTS:
            with Horizontal(classes="detail-row"):
                yield Static("", classes="detail-label")
                yield Static("", classes="detail-value")

    def show_detail(self, name: str, detail: Row) -> None:
        self._put(name, detail_lines(detail))

    def show_loading(self, name: str) -> None:
        self._put(name, [(label, "…") for label in self.PARTS])

    def show_error(self, name: str, message: str) -> None:
        self._put(name, [("error", f"✗ {message}")])

    def show_nothing(self) -> None:
        self._put(None, [("", "no deployment selected")])

    def _put(self, name: str | None, lines: list[tuple[str, str]]) -> None:
        if (name, lines) == (self.deployment, self.lines):
            return  # a refresh that changed nothing redraws nothing
        self.deployment, self.lines = name, lines
        self.border_title = Text(printable(name)) if name else None
        for i, row in enumerate(self.query(".detail-row").results(Horizontal)):
            label, value = row.query(Static)
            row.display = i < len(lines)
            if i < len(lines):
                label.update(Text(printable(lines[i][0])))
                value.update(Text(printable(lines[i][1])))

    @property
    def plain(self) -> str:
        """What the panel says, as plain text (for tests and screen readers)."""
        return "\n".join(f"{label.ljust(LABEL)}{printable(words)}" for label, words in self.lines)
