"""Runs side by side (pushed from Runs by `c`): fields, params, latest metrics and tags in one table, and one
metric's curves of both runs in one plot (textual-plotext), `[`/`]` choosing the metric.

The table's rows are `key | ≠ | A | B`: `≠` marks a row whose values differ (a value one run lacks is `–`),
next to the key so that it stays on screen at 80 columns; `d` shows only the rows that differ.
The plot draws run A with `*` and run B with `+` and names both in its legend, so the curves read apart
without colour. Both runs' details (console/runs.py) load in a thread worker; they are loaded again on the
refresh tick only while one of the runs is still running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static
from textual_plotext import PlotextPlot

from mlbox.tui.screens.base import DetailScreen
from mlbox.tui.widgets import status
from mlbox.types import printable

Row = dict[str, Any]
LETTERS = ("A", "B")
MARKERS = ("*", "+")  # one per run: the curves differ without colour
NONE = "–"
WIDTH = 24  # a key's or a value's cell at most: key, marker and two runs fit in 80 columns; longer ends in `…`
FIELDS = ("name", "id", "experiment", "status", "user", "started_at", "duration_s", "device",
          "dataset_fingerprint", "code_rev")  # fmt: skip
MISSING = object()


@dataclass(frozen=True)
class Series:
    """One run's curve of one metric, as given to the plot (NaN/inf points left out)."""

    label: str
    marker: str
    steps: list[int]
    values: list[float]


def label(letter: str, run: Mapping[str, Any]) -> str:
    """`A baseline (a1b2c3d4)`; `A a1b2c3d4` for a run named by its id, as unnamed runs are."""
    name, short = str(run.get("name")), str(run.get("id"))[:8]
    return printable(f"{letter} {name}" if name == short else f"{letter} {name} ({short})")


def clip(text: str) -> Text:
    return Text(text if len(text) <= WIDTH else text[: WIDTH - 1] + "…")


def compare_rows(runs: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[object], bool]]:
    """(key, each run's value or MISSING, whether they differ) for fields, then params, metrics and tags."""
    out: list[tuple[str, list[object], bool]] = []

    def add(key: str, values: list[object]) -> None:
        out.append((key, values, len(runs) > 1 and any(v != values[0] for v in values[1:])))

    for field in FIELDS:
        add(field, [r.get(field) for r in runs])
    for part in ("params", "metrics", "tags"):
        keys = sorted({str(k) for r in runs for k in (r.get(part) or {})})
        for key in keys:
            add(f"{part}.{key}", [(r.get(part) or {}).get(key, MISSING) for r in runs])
    return out


def shown(key: str, value: object) -> Text:
    """A value as a cell: `–` when absent or null, floats to 6 digits, status in glyph and word, at most WIDTH."""
    if value is MISSING or value is None:
        return Text(NONE)
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif key == "status":
        text = status(value)
    else:
        text = printable(value)
    return clip(text)


def metric_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every metric with a history in any run, the longest history first (ties by name): the default is a curve."""
    longest: dict[str, int] = {}
    for r in runs:
        for key, points in (r.get("history") or {}).items():
            longest[key] = max(longest.get(key, 0), len(points))
    return sorted(longest, key=lambda k: (-longest[k], k))


def curves(runs: Sequence[Mapping[str, Any]], metric: str) -> list[Series]:
    """Each run's curve of `metric` (a run without it has none), its null points left out."""
    out = []
    for letter, marker, run in zip(LETTERS, MARKERS, runs, strict=False):
        points = [(int(s), float(v)) for s, v in (run.get("history") or {}).get(metric, []) if v is not None]
        if points:
            out.append(Series(label(letter, run), marker, [s for s, _ in points], [v for _, v in points]))
    return out


class CurvePlot(PlotextPlot):
    """The chosen metric's curves; `series` is what was given to plotext, for tests and for the legend."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = ""
        self.only_differs = False
        self.series: list[Series] = []

    def draw(self, metric: str, series: list[Series]) -> None:
        self.metric, self.series = metric, series
        plt: Any = self.plt  # plotext's figure is untyped
        plt.clear_figure()
        plt.title(printable(metric))
        plt.xlabel("step")
        for s in series:
            plt.plot(s.steps, s.values, marker=s.marker, label=s.label)
        steps = [step for s in series for step in s.steps]
        if steps:  # whole steps on the axis: plotext would label 9.8, 19.5
            lo, hi = min(steps), max(steps)
            plt.xticks(sorted({round(lo + i * (hi - lo) / 4) for i in range(5)}))
        self.refresh()


class CompareScreen(DetailScreen):
    """Two runs (or one) side by side, with one metric's curves."""

    TITLE = "compare runs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "back", id="mlbox.compare.close"),
        Binding("d", "differs", "only differences", id="mlbox.compare.differs"),
        Binding("left_square_bracket", "metric(-1)", "previous metric", key_display="[", id="mlbox.compare.prev_metric"),
        Binding("right_square_bracket", "metric(1)", "next metric", key_display="]", id="mlbox.compare.next_metric"),
    ]
    DEFAULT_CSS = """
    CompareScreen #compare { height: 1fr; min-height: 4; }
    CompareScreen #metric { height: 1; }
    CompareScreen #plot { height: 1fr; min-height: 8; }
    """

    def __init__(self, run_ids: Sequence[str]) -> None:
        super().__init__()
        self.run_ids = list(run_ids)[:2]
        self.runs: list[Row] = []
        self.metrics: list[str] = []
        self.metric = ""
        self.only_differs = False

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Static(Text(" compare: loading…"), id="title", classes="title")
        yield DataTable[Text](cursor_type="row", zebra_stripes=False, id="compare")
        yield Static("", id="metric")
        yield CurvePlot(id="plot")
        yield Footer()

    @property
    def table(self) -> DataTable[Text]:
        return self.query_one("#compare", DataTable)

    @property
    def plot(self) -> CurvePlot:
        return self.query_one(CurvePlot)

    def load(self) -> list[Row]:
        return [self.client.run_detail(run_id) for run_id in self.run_ids]

    def show(self, data: list[Row]) -> None:
        self.runs = data
        self._fill_table()
        self.metrics = metric_keys(data)
        if self.metric not in self.metrics:
            self.metric = self.metrics[0] if self.metrics else ""
        self._draw()
        self.refresh_bindings()  # `d` and `[`/`]` depend on what was loaded

    def _fill_table(self) -> None:
        table = self.table
        every = compare_rows(self.runs)
        rows = [r for r in every if r[2]] if self.only_differs else every
        pair = len(self.runs) > 1
        differing = sum(1 for r in every if r[2])
        count = f"{differing} of {len(every)} keys differ" if pair else f"{len(every)} keys"
        only = "  (only differences; d: all)" if self.only_differs else ""
        self.query_one("#title", Static).update(Text(f" compare {len(self.runs)} run{'s' if pair else ''}: {count}{only}"))
        cursor = table.cursor_row
        with self.app.batch_update():
            if not table.columns:
                table.add_column("key", key="key")
                if pair:
                    table.add_column("≠", key="differs")
                for letter, run in zip(LETTERS, self.runs, strict=False):
                    table.add_column(clip(label(letter, run)), key=letter)
            table.clear()
            for key, values, differs in rows:
                marker = [Text("≠" if differs else "")] if pair else []
                table.add_row(clip(printable(key)), *marker, *(shown(key, v) for v in values), key=key)
            if rows:
                table.move_cursor(row=min(max(cursor, 0), len(rows) - 1))

    def _draw(self) -> None:
        line = self.query_one("#metric", Static)
        if not self.metric:
            line.update(Text(" no metrics logged"))
            self.plot.draw("", [])
            return
        series = curves(self.runs, self.metric)
        where = f"{self.metrics.index(self.metric) + 1} of {len(self.metrics)}"
        legend = "   ".join(f"{s.marker} {s.label}" for s in series)
        line.update(Text(printable(f" metric {self.metric} ({where}, [ ] other)   {legend}")))
        self.plot.draw(self.metric, series)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "differs":
            return True if len(self.runs) > 1 else None  # one run: nothing to differ from
        if action == "metric":
            return True if len(self.metrics) > 1 else None
        return True

    def action_metric(self, step: int) -> None:
        if self.metrics:
            self.metric = self.metrics[(self.metrics.index(self.metric) + step) % len(self.metrics)]
            self._draw()

    def action_differs(self) -> None:
        if self.runs:
            self.only_differs = not self.only_differs
            self._fill_table()

    def _arm(self) -> None:
        if any(r.get("status") == "running" for r in self.runs) or not self.runs:
            super()._arm()  # a finished run's curves do not change: no reads for them on every tick
