"""The monitoring report's plots: matplotlib figures drawn straight to inline SVG text.

No pyplot and no backend switch: each plot is a bare `matplotlib.figure.Figure` saved with
`format="svg"`, so rendering a report never touches the caller's global backend or opens a
window. Output is deterministic (a fixed hash salt per plot, no date in the metadata) and
small (text stays text: `svg.fonttype = "none"`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

# colours: reference grey, current blue (or red when the feature drifted); variants in a fixed order
REFERENCE = "#9aa5b1"
CURRENT = "#2f6fbd"
DRIFTED = "#c8372d"
PALETTE = ("#2f6fbd", "#d9822b", "#3c9a5f", "#8e5bb5", "#c8372d", "#6b7785", "#b5983c", "#2aa3a3")
LABEL_CHARS = 16  # tick labels longer than this are cut (the page shows every name in full)
# matplotlib names every group `figure_1`, `axes_1`, ... in each file: inlined many times into one
# page those ids repeat, so they go (nothing refers to them; clip paths and markers keep theirs)
_GROUP_ID = re.compile(r' id="[a-z][a-z0-9.]*_\d+"')
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}

Point = tuple[datetime, float]


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Plotter:
    """Draws the report's figures; use inside `session()`, which sets the SVG options for the whole report."""

    def __init__(self) -> None:
        self._count = 0

    @contextmanager
    def session(self) -> Iterator[None]:
        """Deterministic, compact SVG for every plot drawn inside (the caller's rcParams come back after)."""
        import matplotlib

        options: dict[Any, Any] = {
            "svg.fonttype": "none",
            "svg.hashsalt": "mlbox",
            "text.parse_math": False,  # a `$` in a feature name is text, not mathtext
            "font.size": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 9,
            "legend.fontsize": 7,
            "legend.frameon": False,
        }
        with matplotlib.rc_context(options):
            yield

    def _figure(self, width: float, height: float) -> Any:
        from matplotlib.figure import Figure

        return Figure(figsize=(width, height))

    def _svg(self, fig: Any) -> str:
        import matplotlib

        # a salt per plot: the clip-path and marker ids then differ between the plots of one page
        self._count += 1
        matplotlib.rcParams["svg.hashsalt"] = f"mlbox-{self._count}"
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata=_NO_METADATA)
        text = buf.getvalue()
        return _GROUP_ID.sub("", text[text.index("<svg") :]).strip()

    def distribution(self, bins: Sequence[str], reference: Sequence[float], current: Sequence[float], drifted: bool) -> str:
        """Grouped bars: the reference (grey) and current (blue; red when drifted) share of each bin or level.

        The key is on the page, once, not in each plot, and the bars are one PolyCollection
        rather than `ax.bar`'s Rectangle per bar: measured, 34 ms a plot instead of 49 (a report
        draws one per feature, output and variant).
        """
        import numpy as np
        from matplotlib.collections import PolyCollection

        n = len(bins)
        ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
        fig = self._figure(4.0, 2.3)
        rotate = n > 5 or any(len(b) > 8 for b in bins)
        fig.subplots_adjust(left=0.13, right=0.98, top=0.95, bottom=0.4 if rotate else 0.14)
        ax = fig.add_subplot()
        x = np.arange(n, dtype=float)
        width = 0.4
        left = np.concatenate([x - width, x])
        height = np.concatenate([ref, cur])
        boxes = np.stack([np.stack([left, left, left + width, left + width], 1),
                          np.stack([0 * height, height, height, 0 * height], 1)], 2)  # fmt: skip
        colours = [REFERENCE] * n + [DRIFTED if drifted else CURRENT] * n
        ax.add_collection(PolyCollection(list(boxes), facecolors=colours, edgecolors="none"))
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(0.0, max(float(height.max(initial=0.0)), 0.01) * 1.08)
        ax.set_xticks(x, [_short(str(b)) for b in bins], rotation=60 if rotate else 0, ha="right" if rotate else "center")
        ax.yaxis.set_major_locator(_locator(3))
        ax.set_ylabel("share")
        ax.tick_params(axis="x", labelsize=6.5, length=2)
        return self._svg(fig)

    def lines(
        self,
        series: Mapping[str, Sequence[Point]],
        *,
        ylabel: str,
        ylim: tuple[float, float] | None = None,
        dashed: Mapping[str, Sequence[Point]] | None = None,
    ) -> str:
        """One line per series over time (markers on each check); `dashed` series share the colours in order."""
        fig = self._figure(7.2, 2.6)
        fig.subplots_adjust(left=0.08, right=0.74, top=0.95, bottom=0.16)
        ax = fig.add_subplot()
        handles, labels = [], []
        for i, (name, points) in enumerate(series.items()):
            colour = PALETTE[i % len(PALETTE)]
            (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=colour)
            handles.append(line)
            labels.append(_short(name, 28))
        for i, (name, points) in enumerate((dashed or {}).items()):
            colour = PALETTE[i % len(PALETTE)]
            (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], linestyle="--", linewidth=1, color=colour)
            handles.append(line)
            labels.append(_short(name, 28))
        _date_axis(ax)
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        # explicit handles and labels: a name starting with "_" would otherwise be dropped from the legend
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return self._svg(fig)

    def metrics(self, panels: Mapping[str, Mapping[str, Sequence[Point]]]) -> str:
        """Small multiples: one panel per metric, one line per variant in each."""
        names = list(panels)
        cols = min(3, len(names))
        rows = (len(names) + cols - 1) // cols
        height = 1.9 * rows + 0.5
        fig = self._figure(7.2, height)
        fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.6 / height, bottom=0.5 / height, hspace=0.6, wspace=0.3)
        variants = list(dict.fromkeys(v for p in panels.values() for v in p))  # the caller's order: primary first
        colour = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
        lines: dict[str, Any] = {}
        for i, name in enumerate(names):
            ax = fig.add_subplot(rows, cols, i + 1)
            for variant, points in panels[name].items():
                (lines[variant],) = ax.plot(
                    [p[0] for p in points], [p[1] for p in points], marker="o", markersize=2.5, color=colour[variant]
                )
            ax.set_title(name, loc="left")
            ax.yaxis.set_major_locator(_locator(4))
            _date_axis(ax)
        fig.legend(list(lines.values()), [_short(v, 28) for v in lines], loc="upper left", ncols=len(lines))
        return self._svg(fig)

    def ab(self, *, metric: str, values: Mapping[str, float], difference: float | None,
           interval: tuple[float, float] | None, worse: bool) -> str:  # fmt: skip
        """Left: each variant's metric; right: the difference (canary − primary) with its interval as an error bar."""
        fig = self._figure(7.2, 2.4)
        fig.subplots_adjust(left=0.09, right=0.98, top=0.88, bottom=0.14, wspace=0.35)
        left = fig.add_subplot(1, 2, 1)
        names = list(values)
        left.bar(range(len(names)), [values[n] for n in names], 0.5, color=[PALETTE[i] for i in range(len(names))])
        left.set_xticks(range(len(names)), [_short(n, 24) for n in names])
        left.set_title(_short(metric, 40), loc="left")
        for i, n in enumerate(names):
            left.annotate(f"{values[n]:.4g}", (i, values[n]), ha="center", va="bottom", fontsize=7)
        right = fig.add_subplot(1, 2, 2)
        right.axvline(0.0, color=REFERENCE, linestyle="--", linewidth=1)
        if difference is not None:
            err = None
            if interval is not None:
                err = [[max(difference - interval[0], 0.0)], [max(interval[1] - difference, 0.0)]]
            right.errorbar([difference], [0], xerr=err, fmt="o", color=DRIFTED if worse else CURRENT, capsize=5)
            # zero and the whole interval in view, with a margin: where zero falls is the point of the plot
            lo, hi = min(0.0, *(interval or (difference,))), max(0.0, *(interval or (difference,)))
            pad = (hi - lo) * 0.25 or 0.01
            right.set_xlim(lo - pad, hi + pad)
        right.set_xlabel(f"difference in {_short(metric, 40)}")
        right.set_yticks([])
        right.spines["left"].set_visible(False)
        right.set_title("canary − primary, with its interval", loc="left")
        return self._svg(fig)


def _locator(n: int) -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(n)


def _date_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=6)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
