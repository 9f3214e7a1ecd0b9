"""Monitoring over HTTP: `GET /v1/deployments/{name}/monitoring` and the drift, quality and A/B gauges of `/metrics`.

Both read the newest stored results (`monitor_checks`), written by `mlbox monitor …` or by a
policy's scheduled job; a scrape reads them at most once every `CACHE_SECONDS`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from mlbox.box import Box
from mlbox.serve.metrics import Labels, Metrics

CACHE_SECONDS = 5.0
TESTS = {"psi": "value", "ks": "statistic", "chi2": "statistic", "js": "value", "wasserstein": "value"}


def monitoring_view(box: Box, name: str) -> dict[str, Any]:
    """The deployment's latest drift, quality and A/B results, its policy (webhook cut) and its recent actions."""
    from mlbox.monitor.policy import Policy

    records = box.monitor.records
    records.deployed(name)
    latest = {kind: result for (deployment, kind), result in records.latest().items() if deployment == name}
    stored = records.policy(name)
    policy = None if stored is None else Policy.from_dict(name, stored["policy"], stored["source"]).public_dict()
    return {
        "deployment": name, "drift": latest.get("drift"), "quality": latest.get("quality"), "ab": latest.get("ab"),
        "policy": policy, "actions": records.actions(name, 20),
    }  # fmt: skip


MONITORING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["deployment", "drift", "quality", "ab", "policy", "actions"],
    "properties": {
        "deployment": {"type": "string"},
        "drift": {"type": ["object", "null"], "required": ["checked_at", "drifted", "variants", "window", "thresholds"]},
        "quality": {"type": ["object", "null"], "required": ["checked_at", "variants"]},
        "ab": {"type": ["object", "null"], "required": ["checked_at", "verdict"]},
        "policy": {"type": ["object", "null"]},
        "actions": {"type": "array", "items": {"type": "object", "required": ["action", "at", "status", "reason", "evidence"]}},
    },
}


class MonitoringGauges:
    """The latest results as gauge series, for the whole box (read once per scrape, cached a few seconds)."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self._lock = threading.Lock()
        self._at = -CACHE_SECONDS
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}

    def latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._at >= CACHE_SECONDS:
                self._latest = self.box.monitor.latest()
                self._at = time.monotonic()
            return self._latest

    def describe(self, m: Metrics) -> None:
        box = ("deployment", "variant")
        m.gauge("mlbox_drift_detected", self._detected, "1 when the latest drift check found the variant drifted, else 0.",
                labels=box, aggregate="box")  # fmt: skip
        m.gauge("mlbox_drift_share", self._share, "Importance-weighted share of drifted features in the latest check.",
                labels=box, aggregate="box")  # fmt: skip
        m.gauge("mlbox_drift_score", self._scores, "Each test's statistic per feature in the latest check (ks/chi2: the statistic).",
                labels=("deployment", "variant", "feature", "test"), aggregate="box")  # fmt: skip
        m.gauge("mlbox_quality", self._quality, "Quality per variant on labelled traffic in the latest quality check.",
                labels=("deployment", "variant", "metric"), aggregate="box")  # fmt: skip
        m.gauge("mlbox_label_coverage", self._coverage, "Share of logged rows with a label in the latest quality check.",
                labels=box, aggregate="box")  # fmt: skip
        m.gauge("mlbox_ab_verdict", self._verdict, "1 on the latest A/B verdict (canary better, canary worse, …).",
                labels=("deployment", "verdict"), aggregate="box")  # fmt: skip
        m.gauge("mlbox_monitor_last_check_timestamp_seconds", self._checked, "When the latest drift check ran (Unix time).",
                labels=("deployment",), aggregate="box")  # fmt: skip

    def _of(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [(d, r) for (d, k), r in self.latest().items() if k == kind]

    def _detected(self) -> dict[Labels, float]:
        return {(("deployment", d), ("variant", v)): float(bool(x.get("drifted"))) for d, r in self._of("drift")
                for v, x in r.get("variants", {}).items()}  # fmt: skip

    def _share(self) -> dict[Labels, float]:
        return {(("deployment", d), ("variant", v)): float(x.get("weighted_share") or 0.0) for d, r in self._of("drift")
                for v, x in r.get("variants", {}).items()}  # fmt: skip

    def _scores(self) -> dict[Labels, float]:
        out: dict[Labels, float] = {}
        for d, r in self._of("drift"):
            for v, x in r.get("variants", {}).items():
                for feature, f in x.get("features", {}).items():
                    for test, key in TESTS.items():
                        value = ((f.get("tests") or {}).get(test) or {}).get(key)
                        if isinstance(value, (int, float)):
                            out[(("deployment", d), ("variant", v), ("feature", feature), ("test", test))] = float(value)
        return out

    def _quality(self) -> dict[Labels, float]:
        out: dict[Labels, float] = {}
        for d, r in self._of("quality"):
            for v, q in r.get("variants", {}).items():
                for metric, value in (q.get("metrics") or {}).items():
                    if isinstance(value, (int, float)):
                        out[(("deployment", d), ("variant", v), ("metric", metric))] = float(value)
        return out

    def _coverage(self) -> dict[Labels, float]:
        return {(("deployment", d), ("variant", v)): float(q.get("coverage") or 0.0) for d, r in self._of("quality")
                for v, q in r.get("variants", {}).items()}  # fmt: skip

    def _verdict(self) -> dict[Labels, float]:
        return {(("deployment", d), ("verdict", str(r.get("verdict")))): 1.0 for d, r in self._of("ab")}

    def _checked(self) -> dict[Labels, float]:
        from mlbox import clock

        return {(("deployment", d),): clock.parse_iso(r["checked_at"]).timestamp() for d, r in self._of("drift")}
