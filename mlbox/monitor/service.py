"""The monitoring service of a box: profiles, drift checks, quality, A/B verdicts, serving statistics, history.

Everything here reads meta.db and the immutable Parquet files of the prediction log and its
labels; the only writes are rows of the monitor tables (and profile artifacts), so checks may
run from the CLI, a job or the TUI while `mlbox serve` writes the log.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from mlbox import clock
from mlbox.errors import NotFound
from mlbox.flavors.signature import Signature
from mlbox.monitor.check import CheckResult, compare_rows
from mlbox.monitor.logread import log_files, read_window
from mlbox.monitor.records import Records
from mlbox.monitor.verdict import Thresholds
from mlbox.monitor.window import Window
from mlbox.registry.store import Registry
from mlbox.store.audit import AuditLog
from mlbox.store.sqlite import Database


class Monitor:
    """Monitoring over one box's registry, prediction log and labels; results kept in the monitor tables."""

    def __init__(self, db: Database, home: Path, registry: Registry, audit: AuditLog, threads: int | None = None) -> None:
        self.db = db
        self.home = home
        self.registry = registry
        self.audit = audit
        self.threads = threads
        self.records = Records(db)

    # profiles ----------------------------------------------------------------
    def save_profile(self, ref: str, profile: dict[str, Any], actor: str) -> None:
        self.registry.save_profile(ref, profile, actor)

    def profile(self, ref: str) -> dict[str, Any]:
        profile = self.registry.profile(ref)
        if profile is None or profile.get("format") != "mlbox-profile/1":
            raise NotFound(
                f"model {ref} has no reference profile",
                hint=f"build it from its pinned training snapshot: mlbox monitor profile {ref}",
            )
        return profile

    # drift -------------------------------------------------------------------
    def thresholds(self, deployment: str) -> Thresholds:
        """The deployment's policy thresholds, or the defaults."""
        stored = self.records.policy(deployment)
        drift = (stored or {}).get("policy", {}).get("drift")
        return Thresholds.from_dict(drift) if drift else Thresholds()

    def check(self, deployment: str, window: Window, *, thresholds: Thresholds | None = None, record: bool = True,
              actor: str = "monitor", now: datetime | None = None) -> CheckResult:  # fmt: skip
        """Drift of every variant of `deployment` over `window`; stored in the history unless `record` is false."""
        deployed = self.records.deployed(deployment)
        now = now or clock.now()
        since, until = window.bounds(now)
        limits = thresholds or self.thresholds(deployment)
        files = log_files(self.db, self.home, deployment, since, until)
        result = CheckResult(deployment=deployment, checked_at=now, window=window.as_dict(now), thresholds=limits)
        profiles = {variant: self.profile(ref) for variant, ref in deployed.variants().items()}
        plans = {v: (ref, Signature.from_dict(self.registry.get(ref).signature)) for v, ref in deployed.variants().items()}
        found = read_window(files, plans, since=since, until=until, last_rows=window.last_rows, threads=self.threads)
        for variant, rows in found.items():
            result.variants[variant] = compare_rows(rows, profiles[variant], limits)
        if record:
            self.records.add_check(deployment, "drift", result.as_dict(), "drift" if result.drifted else "ok", actor)
        return result

    def history(self, deployment: str, kind: str = "drift", limit: int = 50) -> list[dict[str, Any]]:
        self.records.deployed(deployment)
        return self.records.checks(deployment, kind, limit)

    # labels, quality, A/B, serving ----------------------------------------------
    def label_files(self, deployment: str) -> list[Path]:
        rows = self.db.query("SELECT path FROM label_batches WHERE deployment = ? ORDER BY id", (deployment,))
        return [self.home / r["path"] for r in rows]

    def _labelled(self, deployment: str, window: Window, now: datetime) -> tuple[Any, str, list[str], dict[str, str]]:
        from mlbox.monitor.quality import labelled_rows

        deployed = self.records.deployed(deployment)
        since, until = window.bounds(now)
        frame = labelled_rows(log_files(self.db, self.home, deployment, since, until), self.label_files(deployment), since, until)
        signature = Signature.from_dict(self.registry.get(deployed.primary).signature)
        return frame, signature.task, [str(c) for c in signature.classes], deployed.variants()

    def quality(self, deployment: str, window: Window, *, record: bool = True, actor: str = "monitor",
                now: datetime | None = None) -> dict[str, Any]:  # fmt: skip
        """Quality per variant on labelled rows in the window, with label coverage."""
        from mlbox.monitor.quality import quality

        now = now or clock.now()
        frame, task, classes, variants = self._labelled(deployment, window, now)
        scores = quality(frame, task, classes, variants=list(variants))
        result = {
            "deployment": deployment, "checked_at": clock.iso(now), "window": window.as_dict(now), "task": task,
            "variants": {v: {**q.as_dict(), "model": variants.get(v)} for v, q in scores.items()},
        }  # fmt: skip
        if record:
            self.records.add_check(deployment, "quality", result, "ok", actor)
        return result

    def ab(self, deployment: str, window: Window, *, record: bool = True, actor: str = "monitor",
           now: datetime | None = None, **options: Any) -> dict[str, Any]:  # fmt: skip
        """Primary against canary on labelled traffic: the difference, its interval and a plain verdict."""
        from mlbox.monitor.abtest import ab_verdict

        now = now or clock.now()
        frame, task, classes, variants = self._labelled(deployment, window, now)
        verdict = ab_verdict(frame, task, classes, **options).as_dict()
        result = {"deployment": deployment, "checked_at": clock.iso(now), "window": window.as_dict(now), **verdict}
        if record:
            self.records.add_check(deployment, "ab", result, str(verdict.get("verdict")), actor)
        return result

    def serving(self, deployment: str, window: Window, now: datetime | None = None) -> dict[str, Any]:
        """Requests, errors, error rate and latency percentiles per variant, from the log."""
        from mlbox.monitor.serving import serving_stats

        self.records.deployed(deployment)
        since, until = window.bounds(now or clock.now())
        stats = serving_stats(log_files(self.db, self.home, deployment, since, until), since, until)
        return {v: s.as_dict() for v, s in stats.items()}

    def latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(deployment, kind) -> newest stored result: what `/metrics` and the monitoring route show."""
        return self.records.latest()
