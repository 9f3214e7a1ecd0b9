"""A monitoring check in full (Monitoring, `enter`): each feature's drift by severity, the histogram of the highlighted
feature (reference against current, as bars), and the deployment's drift share and quality over time as sparklines."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Sparkline, Static

from mlbox.tui.client import Row
from mlbox.tui.screens.base import DetailScreen
from mlbox.tui.widgets import BoxTable
from mlbox.types import printable

SEVERITY = {"drift": "✗ drift", "watch": "! watch", "ok": "✓ ok"}  # glyph and word: never colour alone
BAR = 24  # characters of the longest histogram bar


class CheckDetail(DetailScreen):
    """One stored check of one deployment, opened on the variant of the row it was opened from."""

    TITLE = "check"
    COLUMNS = ("severity", "name", "psi", "ks", "p_value", "js", "null_rate", "rows", "reason")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "back", id="mlbox.check.close"),
        Binding("v", "next_variant", "next variant", id="mlbox.check.variant"),
    ]
    DEFAULT_CSS = """
    CheckDetail #features { height: 1fr; }
    CheckDetail #histogram { height: auto; max-height: 9; border: round $primary; padding: 0 1; }
    CheckDetail #history { height: auto; border: round $primary; padding: 0 1; }
    CheckDetail .hist-row { height: 1; }
    CheckDetail .hist-label { width: 22; }
    CheckDetail .hist-row Sparkline { width: 1fr; height: 1; }
    CheckDetail .hist-value { width: 12; padding-left: 1; }
    """

    def __init__(self, check_id: int, variant: str = "") -> None:
        super().__init__()
        self.check_id, self.variant = check_id, variant
        self.detail: Row | None = None

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Static("", id="title", classes="title")
        yield BoxTable(self.COLUMNS, "name", id="features")
        yield Static("", id="histogram")
        yield Vertical(id="history")
        yield Footer()

    def load(self) -> Row:
        return self.client.check_detail(self.check_id)

    def show(self, data: Row) -> None:
        first = self.detail is None
        self.detail = data
        if self.variant not in data["variants"]:
            self.variant = next(iter(data["variants"]), "")
        self._variant()
        if first:
            self._history(data["history"])

    def _variant(self) -> None:
        data = self.detail
        if data is None:
            return
        v = data["variants"].get(self.variant) or {"model": "", "rows": 0, "drifted": False, "share": None, "features": []}
        share = "" if v["share"] is None else f", {v['share']:.0%} of features drifted"
        verdict = "! drift" if v["drifted"] else "✓ ok"
        head = f" {data['deployment']} {data['kind']} check {data['id']} · {self.variant} {v['model']} · {verdict} ({v['rows'] or 0:,} rows{share})"
        self.query_one("#title", Static).update(Text(printable(head)))
        rows = [{**f, "severity": SEVERITY.get(f["severity"], f"· {f['severity']}")} for f in v["features"]]
        self.query_one(BoxTable).set_rows(rows)
        self._histogram()

    def on_data_table_row_highlighted(self) -> None:
        self._histogram()

    def _histogram(self) -> None:
        """Reference against current share per bin of the highlighted feature, as bars with their numbers."""
        selected = self.query_one(BoxTable).selected()
        box = self.query_one("#histogram", Static)
        feature = None
        if selected is not None and self.detail is not None:
            features = (self.detail["variants"].get(self.variant) or {}).get("features", [])
            feature = next((f for f in features if f["name"] == selected["name"]), None)
        if feature is None or not feature["histogram"]["bins"]:
            box.update(Text("histogram: – (no feature or no bins)"))
            return
        box.update(histogram_text(feature))

    def _history(self, history: Row) -> None:
        """Drift share per variant and each quality metric per variant, oldest first, as sparklines with the newest value."""
        panel = self.query_one("#history", Vertical)
        lines: list[tuple[str, list[float], str]] = []
        for variant in sorted({d["variant"] for d in history["drift"]}):
            shares = [d["share"] or 0.0 for d in history["drift"] if d["variant"] == variant]
            lines.append((f"drift share {variant}", shares, f"{shares[-1]:.0%}"))
        metrics = sorted({(q["variant"], m) for q in history["quality"] for m in q["metrics"]})
        for variant, metric in metrics[:6]:  # 80×24: the first six series; the CLI report has them all
            values = [q["metrics"][metric] for q in history["quality"] if q["variant"] == variant and q["metrics"].get(metric) is not None]
            if values:
                lines.append((f"{metric} {variant}", values, f"{values[-1]:.4g}"))
        if not lines:
            panel.mount(Static("over time: – (one check so far)"))
            return
        panel.mount(Static(Text("over time (oldest left)", style="bold")))
        for label, values, last in lines:
            panel.mount(Horizontal(
                Static(Text(printable(label)), classes="hist-label"), Sparkline(values), Static(Text(last), classes="hist-value"),
                classes="hist-row",
            ))  # fmt: skip

    def action_next_variant(self) -> None:
        if self.detail is None or not self.detail["variants"]:
            return
        names = list(self.detail["variants"])
        self.variant = names[(names.index(self.variant) + 1) % len(names)] if self.variant in names else names[0]
        self._variant()


def histogram_text(feature: Row) -> Text:
    """`bin  ref ████████ 0.31  cur ███ 0.12`, one line per bin (the shares as numbers too: it reads without colour)."""
    h = feature["histogram"]
    top = max([*h["reference"], *h["current"], 1e-12])
    width = max(len(printable(b)) for b in h["bins"][:8])
    lines = [Text(f"{printable(feature['name'])}: reference (r) against current (c), share per bin", style="bold")]
    for b, r, c in list(zip(h["bins"], h["reference"], h["current"], strict=False))[:8]:
        bar_r, bar_c = "█" * round(BAR * r / top), "▒" * round(BAR * c / top)
        lines.append(Text(f"{printable(b):<{width}}  r {bar_r:<{BAR}} {r:.2f}  c {bar_c:<{BAR}} {c:.2f}"))
    if len(h["bins"]) > 8:
        lines.append(Text(f"… {len(h['bins']) - 8} more bins (mlbox monitor report draws them all)"))
    return Text("\n").join(lines)
