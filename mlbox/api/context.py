"""What one serving worker holds: the box, live deployments, prediction log, metrics, auth cache.

Built after the worker process starts (SQLite connections must not cross a fork), closed
on shutdown (the prediction log is flushed then).
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from typing import Any


from mlbox.box import Box
from mlbox.config import Settings
from mlbox.security.roles import require
from mlbox.serve.metrics import Metrics
from mlbox.serve.predlog import PredictionLog
from mlbox.serve.runtime import ModelCache, Runtime
from mlbox.serve.shadow import ShadowItem, ShadowWorker
from mlbox.types import Actor

log = logging.getLogger("mlbox.serve")
AUTH_CACHE_SECONDS = 5.0


class ServeContext:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.box = Box(settings, actor="mlbox-serve")
        self.deployments = self.box.deployments
        self.runtime = Runtime(
            self.deployments,
            ModelCache(self.box.registry, settings["serve.threads"]),
            reload_seconds=settings["serve.reload_seconds"],
        )
        self.predlog = PredictionLog(
            self.box.paths.predictions,
            self.box.db,
            flush_seconds=settings["serve.log_flush_seconds"],
            max_rows=settings["serve.log_max_rows"],
            on_error=lambda exc: log.warning("prediction log flush failed: %s", exc),
        )
        self.metrics = Metrics()
        self.auth_required = bool(settings["serve.auth"])
        self.max_rows = int(settings["serve.max_rows"])
        self.max_body = int(settings["serve.max_body_bytes"])
        self.max_concurrency = int(settings["serve.max_concurrency"])
        self.in_flight = 0
        self.shadow = ShadowWorker(self._shadow_result)
        self._auth_cache: dict[str, tuple[Actor, float]] = {}
        self.started = False
        prefix = secrets.token_hex(6)  # unique per worker start; a counter makes each id unique within it
        self.request_ids = (f"{prefix}{n:010x}" for n in itertools.count())
        self._describe()

    def _describe(self) -> None:
        m = self.metrics
        m.describe("mlbox_requests_total", "Requests by route, deployment, variant and status.")
        m.describe("mlbox_request_latency_seconds", "Request latency by deployment and variant.")
        m.describe("mlbox_shadow_predictions_total", "Shadow predictions made, by deployment.")
        m.describe("mlbox_shadow_disagreements_total", "Shadow predictions that disagree with the answer returned.")
        m.describe("mlbox_shadow_errors_total", "Shadow predictions that failed or were dropped.")
        m.gauge("mlbox_prediction_log_backlog", lambda: {(): float(self.predlog.backlog)}, "Records waiting to be written.")
        m.gauge("mlbox_prediction_log_dropped", lambda: {(): float(self.predlog.dropped)}, "Records dropped (buffer full).")
        m.gauge("mlbox_shadow_dropped", lambda: {(): float(self.shadow.dropped)}, "Shadow copies dropped (queue full).")
        m.gauge("mlbox_requests_in_flight", lambda: {(): float(self.in_flight)}, "Requests being served now.")
        m.gauge(
            "mlbox_jobs",
            lambda: {(("status", s),): float(n) for s, n in self.box.jobs.counts().items()},
            "Jobs in the queue by status (queued = queue depth).",
        )
        m.gauge(
            "mlbox_gpu_allocated",
            lambda: {(("gpu", str(g)),): float(j) for g, j in self.box.jobs.gpu_allocation().items()},
            "GPUs held by running jobs (value: the job id).",
        )
        m.gauge(
            "mlbox_deployment_revision",
            lambda: {(("deployment", n),): float(d.deployment.revision) for n, d in self.runtime.live.items()},
            "Revision of each deployment this worker serves.",
        )

    def _shadow_result(self, item: ShadowItem, pred: Any, agree: bool, latency_ms: float, error: str | None) -> None:
        labels = (("deployment", item.deployment),)
        if error is not None:
            self.metrics.inc("mlbox_shadow_errors_total", (*labels, ("reason", "error")))
            log.warning("shadow %s failed: %s", item.model.ref, error)
            return
        self.metrics.inc("mlbox_shadow_predictions_total", labels)
        if not agree:
            self.metrics.inc("mlbox_shadow_disagreements_total", labels)
        self.predlog.append({
            "ts": time.time(), "request_id": item.request_id, "deployment": item.deployment, "model": item.model.ref,
            "variant": "shadow", "shadow": True, "latency_ms": latency_ms, "entity": item.entity, "inputs": item.rows,
            "outputs": json.dumps(item.model.outputs(pred)), "error": None,
        })  # fmt: skip

    def start(self) -> None:
        self.runtime.start()
        self.predlog.start()
        self.shadow.start()
        self.started = True

    def close(self) -> None:
        self.runtime.stop()
        self.shadow.close()
        self.predlog.close()
        self.box.close()

    def authenticate(self, header: str | None, action: str) -> Actor:
        """The actor behind `Authorization: Bearer <token>`, checked for `action` (cached for 5 s)."""
        if not self.auth_required:
            return Actor("anonymous", "admin", "system")
        from mlbox.errors import AuthError

        if not header or not header.startswith("Bearer "):
            raise AuthError("missing API token", hint="send Authorization: Bearer mlbx_...")
        token = header[7:].strip()
        now = time.monotonic()
        cached = self._auth_cache.get(token)
        if cached is None or cached[1] < now:
            actor = self.box.identity.authenticate(token, touch=False)
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[token] = (actor, now + AUTH_CACHE_SECONDS)
        else:
            actor = cached[0]
        require(actor, action)
        return actor

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        problems = dict(self.runtime.errors)
        ready = self.started and not problems
        return ready, {"deployments": sorted(self.runtime.live), "problems": problems}
