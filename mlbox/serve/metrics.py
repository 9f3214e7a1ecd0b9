"""Lightweight Prometheus metrics for the server: counters and latency histograms, text exposition.

BentoML's own per-request metrics middleware is off (it costs more than the inference);
these are plain dict updates on the request path.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
Labels = tuple[tuple[str, str], ...]


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels)
    return "{" + inner + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.histograms: dict[str, dict[Labels, list[float]]] = defaultdict(dict)  # bucket counts + [sum, count]
        self.gauges: dict[str, Callable[[], dict[Labels, float]]] = {}
        self.help: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self._series: dict[tuple[str, str, str], tuple[dict[Labels, float], Labels, list[float]]] = {}

    def inc(self, name: str, labels: Labels = (), value: float = 1.0) -> None:
        with self._lock:
            self.counters[name][labels] += value

    def observe(self, name: str, labels: Labels, value_ms: float) -> None:
        with self._lock:
            _add(self._histogram(name, labels), value_ms)

    def _histogram(self, name: str, labels: Labels) -> list[float]:
        h = self.histograms[name].get(labels)
        if h is None:
            h = self.histograms[name][labels] = [0.0] * (len(BUCKETS_MS) + 2)
        return h

    def request(self, route: str, deployment: str, variant: str, latency_ms: float) -> None:
        """One answered request: `mlbox_requests_total` (status 200) and its latency, through a cached series."""
        series = self._series.get((route, deployment, variant))
        if series is None:
            labels = (("deployment", deployment), ("variant", variant))
            with self._lock:
                series = (self.counters["mlbox_requests_total"], (("route", route), *labels, ("status", "200")),
                          self._histogram("mlbox_request_latency_seconds", labels))  # fmt: skip
            self._series[(route, deployment, variant)] = series
        counters, key, h = series
        with self._lock:
            counters[key] += 1
            _add(h, latency_ms)

    def gauge(self, name: str, fn: Callable[[], dict[Labels, float]], help_text: str, kind: str = "gauge") -> None:
        """A series read from `fn` at each scrape; `kind="counter"` for totals kept elsewhere (the sidecar's)."""
        self.gauges[name] = fn
        self.help[name] = help_text
        self.kinds[name] = kind

    def describe(self, name: str, help_text: str) -> None:
        self.help[name] = help_text

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self.counters.items()):
                lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} counter"]
                lines += [f"{name}{_fmt(labels)} {value:g}" for labels, value in sorted(series.items())]
            for name, hseries in sorted(self.histograms.items()):
                lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} histogram"]
                for labels, h in sorted(hseries.items()):
                    cumulative = 0.0
                    for bound, n in zip(BUCKETS_MS, h, strict=False):
                        cumulative += n
                        lines.append(f"{name}_bucket{_fmt((*labels, ('le', f'{bound / 1000:g}')))} {cumulative:g}")
                    lines.append(f"{name}_bucket{_fmt((*labels, ('le', '+Inf')))} {h[-1]:g}")
                    lines.append(f"{name}_sum{_fmt(labels)} {h[-2]:.6f}")
                    lines.append(f"{name}_count{_fmt(labels)} {h[-1]:g}")
        for name, fn in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {self.help.get(name, name)}", f"# TYPE {name} {self.kinds.get(name, 'gauge')}"]
            lines += [f"{name}{_fmt(labels)} {value:g}" for labels, value in sorted(fn().items())]
        return "\n".join(lines) + "\n"


def _add(h: list[float], value_ms: float) -> None:
    i = bisect.bisect_left(BUCKETS_MS, value_ms)
    if i < len(BUCKETS_MS):
        h[i] += 1
    h[-2] += value_ms / 1000
    h[-1] += 1
