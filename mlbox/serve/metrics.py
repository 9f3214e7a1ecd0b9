"""Prometheus metrics of a serving worker, kept and exposed by prometheus_client, summed over the server's workers.

Under `mlbox serve` every worker process has PROMETHEUS_MULTIPROC_DIR: BentoML gives each
server start a fresh, wiped `$BENTOML_HOME/prometheus_multiproc_dir`. prometheus_client then
keeps every value in a per-process mmap file, and a scrape of any worker merges the files of
all of them (`MultiProcessCollector`), so counters and histograms are exact sums over the
workers at the moment of the scrape. Without it (one process: in-process tests) the values
live in this object's own registry and the same code renders them.

Series whose values live elsewhere (the sidecar's counters, the log backlog, what is
loaded) are copied in by `refresh()`: at each scrape by the scraping worker, and every
second by each worker when there are several, so another worker's copy is at most a second
old. Series about the whole box (the job queue) are read at scrape time only.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.samples import Sample

from mlbox.config import env_value

log = logging.getLogger("mlbox.serve")

BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REFRESH_SECONDS = 1.0

# Every metric family `mlbox serve` exports (what dashboards may query); tests/monitor/test_loop_e2e.py
# holds it equal to the families a live server's /metrics describes.
EXPORTED = (
    "mlbox_ab_verdict", "mlbox_deployment_revision", "mlbox_drift_detected", "mlbox_drift_score", "mlbox_drift_share",
    "mlbox_gpu_allocated", "mlbox_jobs", "mlbox_label_coverage", "mlbox_model_info", "mlbox_monitor_last_check_timestamp_seconds",
    "mlbox_prediction_log_backlog", "mlbox_prediction_log_dropped", "mlbox_prediction_log_written_total", "mlbox_quality",
    "mlbox_request_latency_seconds", "mlbox_requests_in_flight", "mlbox_requests_total", "mlbox_shadow_disagreements_total",
    "mlbox_shadow_dropped", "mlbox_shadow_errors_total", "mlbox_shadow_predictions_total", "mlbox_sidecar_restarts_total",
)  # fmt: skip


def metric_names() -> tuple[str, ...]:
    """The metric families mlbox exports, sorted (a histogram's `_bucket`/`_sum`/`_count` series are its family's)."""
    return EXPORTED
Labels = tuple[tuple[str, str], ...]
# how a series read from a callback combines over workers: summed, the smallest or largest of
# the live workers', or "box" (the same from every worker: read by the scraping worker only)
Aggregate = Literal["sum", "min", "max", "box"]
_MODES = {"sum": "livesum", "min": "livemin", "max": "livemax"}
# the value a label set that went away is set to (an mmap file cannot forget a key): neutral
# for its aggregate, and dropped from the exposition where it survives the merge
_GONE = {"sum": 0.0, "min": math.inf, "max": -math.inf}


def multiproc_dir() -> Path | None:
    """The folder prometheus_client keeps this process's values in (PROMETHEUS_MULTIPROC_DIR), if any."""
    value = env_value("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


@dataclass
class _Copied:
    """One series copied from a callback into a prometheus_client Gauge (or Counter, for totals kept elsewhere)."""

    fn: Callable[[], dict[Labels, float]]
    metric: Gauge | Counter
    labelnames: tuple[str, ...]
    aggregate: Aggregate
    last: dict[tuple[str, ...], float] = field(default_factory=dict)

    def refresh(self) -> None:
        values = {tuple(dict(labels).get(n, "") for n in self.labelnames): float(v) for labels, v in self.fn().items()}
        for key, value in values.items():
            child: Any = self.metric.labels(*key) if self.labelnames else self.metric
            if isinstance(self.metric, Counter):
                # a total kept elsewhere: add what it grew by (it only grows; a smaller value adds nothing)
                before = self.last.get(key, 0.0)
                if value > before:
                    child.inc(value - before)
                    self.last[key] = value
            else:
                child.set(value)
                self.last[key] = value
        if isinstance(self.metric, Gauge):
            for key in [k for k in self.last if k not in values]:
                (self.metric.labels(*key) if self.labelnames else self.metric).set(_GONE[self.aggregate])
                del self.last[key]


@dataclass
class _Box:
    """A box-wide series, read at scrape time by the scraping worker."""

    name: str
    help_text: str
    labelnames: tuple[str, ...]
    fn: Callable[[], dict[Labels, float]]

    def family(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self.name, self.help_text, labels=list(self.labelnames))
        for labels, value in sorted(self.fn().items()):
            got = dict(labels)
            family.add_metric([got.get(n, "") for n in self.labelnames], float(value))
        return family


class _Families:
    """Already-collected metric families, in the shape `generate_latest` reads (anything with `collect()`)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class Metrics:
    """One worker's metrics: the request counter and latency histogram, copied and box-wide series, the exposition."""

    def __init__(self, directory: Path | Literal["environment"] | None = "environment") -> None:
        """`directory`: where the workers' files are (default: PROMETHEUS_MULTIPROC_DIR); None: this process only."""
        self.directory = multiproc_dir() if directory == "environment" else directory
        self.registry = CollectorRegistry(auto_describe=False)
        self._counters: dict[str, tuple[Counter, tuple[str, ...]]] = {}
        self._children: dict[tuple[str, Labels], Any] = {}
        self._hot: dict[tuple[str, str, str], tuple[Callable[[], None], Callable[[float], None]]] = {}
        self._copied: list[_Copied] = []
        self._box: list[_Box] = []
        self._gone_filtered: set[str] = set()  # min/max gauges: drop the _GONE value where it survives
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._requests = self.counter(
            "mlbox_requests_total", "Requests by route, deployment, variant and status.", ("route", "deployment", "variant", "status")
        )
        self._latency = Histogram(
            "mlbox_request_latency_seconds", "Request latency by deployment and variant.", ("deployment", "variant"),
            buckets=BUCKETS_S, registry=self.registry,
        )  # fmt: skip

    # the request path --------------------------------------------------------------------------

    def request(self, route: str, deployment: str, variant: str, latency_ms: float) -> None:
        """One answered request: `mlbox_requests_total` (status 200) and its latency, through cached label children."""
        hot = self._hot.get((route, deployment, variant))
        if hot is None:
            hot = self._hot[(route, deployment, variant)] = (
                self._requests.labels(route, deployment, variant, "200").inc,
                self._latency.labels(deployment, variant).observe,
            )
        hot[0]()
        hot[1](latency_ms / 1000)

    def inc(self, name: str, labels: Labels = (), value: float = 1.0) -> None:
        """Add `value` to counter `name`; labels it has that `labels` leaves out are "" (e.g. no deployment)."""
        child = self._children.get((name, labels))
        if child is None:
            counter, names = self._counters[name]
            given = dict(labels)
            unknown = set(given) - set(names)
            if unknown:
                raise ValueError(f"{name} has no label {sorted(unknown)[0]!r} (labels: {', '.join(names)})")
            child = self._children[(name, labels)] = counter.labels(*(given.get(n, "") for n in names))
        child.inc(value)

    # declaring series --------------------------------------------------------------------------

    def counter(self, name: str, help_text: str, labelnames: tuple[str, ...] = ()) -> Counter:
        """A counter this process increments (`inc`)."""
        counter = Counter(name, help_text, labelnames, registry=self.registry)
        self._counters[name] = (counter, labelnames)
        return counter

    def gauge(
        self,
        name: str,
        fn: Callable[[], dict[Labels, float]],
        help_text: str,
        kind: Literal["gauge", "counter"] = "gauge",
        labels: tuple[str, ...] = (),
        aggregate: Aggregate = "sum",
    ) -> None:
        """A series read from `fn`: `kind="counter"` for totals kept elsewhere (the sidecar's); see `Aggregate`."""
        if aggregate == "box":
            self._box.append(_Box(name, help_text, labels, fn))
            return
        metric: Gauge | Counter
        if kind == "counter":
            metric = Counter(name, help_text, labels, registry=self.registry)
        else:
            metric = Gauge(name, help_text, labels, registry=self.registry, multiprocess_mode=_MODES[aggregate])  # type: ignore[arg-type]
            if aggregate != "sum":
                self._gone_filtered.add(name)
        self._copied.append(_Copied(fn, metric, labels, aggregate))

    # copying and exposing ----------------------------------------------------------------------

    def refresh(self) -> None:
        """Copy every callback series into this process's values (one failing callback skips only itself)."""
        with self._refresh_lock:
            for series in self._copied:
                try:
                    series.refresh()
                except Exception:  # e.g. a dict resized under us by another thread: next refresh
                    log.debug("metrics: refreshing %s failed", series.metric, exc_info=True)

    def start(self) -> None:
        """With several workers, copy the callback series every second so other workers' scrapes see them."""
        if self.directory is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlbox-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self.refresh()

    def close(self) -> None:
        """Stop copying; this process's live gauges leave the sum (its counters stay in it, as totals must)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.directory is not None:
            mark_process_dead(os.getpid(), str(self.directory))  # type: ignore[no-untyped-call]

    def render(self) -> bytes:
        """The Prometheus text exposition: every mlbox series, summed over the live workers."""
        self.refresh()
        if self.directory is not None:
            sweep_dead(self.directory)
            merged = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(merged, path=str(self.directory))  # type: ignore[no-untyped-call]
            source: Iterable[Metric] = merged.collect()
        else:
            source = self.registry.collect()
        families = [self._tidy(m) for m in source if m.name.startswith("mlbox_")]
        families += [b.family() for b in self._box]
        return generate_latest(_Families(sorted(families, key=lambda m: m.name)))

    def _tidy(self, metric: Metric) -> Metric:
        """Drop `_created` samples and vanished label sets; order samples by labels, buckets before count and sum."""
        out = Metric(metric.name, metric.documentation, metric.type)
        gone = {math.inf, -math.inf} if metric.name in self._gone_filtered else set()
        keep = [s for s in metric.samples if not s.name.endswith("_created") and s.value not in gone]
        out.samples = sorted(keep, key=_sample_order)
        return out


def _sample_order(s: Sample) -> tuple[Any, ...]:
    le = s.labels.get("le")
    rest = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
    kind = 0 if s.name.endswith("_bucket") else 1 if s.name.endswith("_count") else 2
    return rest, kind, float(le) if le is not None else 0.0, s.name


def sweep_dead(directory: Path) -> None:
    """`mark_process_dead` for every process whose live gauges are still on file (a worker killed and replaced)."""
    import psutil

    me = os.getpid()
    for path in directory.glob("gauge_live*_*.db"):
        try:
            pid = int(path.stem.rsplit("_", 1)[1])
        except ValueError:
            continue
        if pid != me and not psutil.pid_exists(pid):
            mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]

