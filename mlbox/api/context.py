"""What one serving worker holds: the box, live deployments, its sidecar, metrics, auth cache.

Built after the worker process starts (SQLite connections must not cross a fork), closed
on shutdown (the sidecar flushes the prediction log then).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mlbox.api import admission
from mlbox.api.admission import Admission
from mlbox.box import Box
from mlbox.config import Settings, child_env, env_value
from mlbox.errors import AuthError, MlboxError, Overloaded, PermissionDenied, UsageError
from mlbox.security.identity import Grant
from mlbox.security.oidc import OidcVerifier, looks_like_jwt
from mlbox.security.roles import require
from mlbox.security.scopes import ScopeKind, refusal
from mlbox.serve.metrics import Labels, Metrics
from mlbox.serve.predlog.worker import Offload
from mlbox.serve.runtime import ModelCache, Runtime
from mlbox.types import Actor

log = logging.getLogger("mlbox.serve")
# How stale a worker's view of users and tokens may be: it reads meta.db's auth revision at most this often
# (one indexed read) and drops its token cache when the revision moved. Revocation, disabling and demotion
# reach every worker within this; expiry is checked against the clock on every request.
AUTH_RECHECK_SECONDS = 0.25
LOGIN_AUDIT_SECONDS = 3600.0  # a token login is audited at most once an hour per token
REALM = 'Bearer realm="mlbox"'
BEARER_HINT = "send Authorization: Bearer mlbx_..."


def sidecar_env() -> dict[str, str]:
    """This environment, with the folder holding this mlbox first on the path (a Bento carries mlbox as source)."""
    root = str(Path(__file__).resolve().parents[2])
    path = env_value("PYTHONPATH")
    return child_env(PYTHONPATH=root + (os.pathsep + path if path else ""), BENTOML_DO_NOT_TRACK="True")


class ServeContext:
    """One worker's serving state: its box, live deployments, prediction-log sidecar, metrics, limits and auth cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.box = Box(settings, actor="mlbox-serve")
        self.deployments = self.box.deployments
        self.runtime = Runtime(
            self.deployments,
            ModelCache(self.box.registry, settings["serve.threads"]),
            reload_seconds=settings["serve.reload_seconds"],
        )
        self.offload = Offload(
            [sys.executable, "-m", "mlbox.serve.predlog.sidecar", str(settings.home), str(settings["serve.threads"]),
             str(settings["serve.log_flush_seconds"]), str(settings["serve.log_max_rows"])],
            env=sidecar_env(),
            max_rows=settings["serve.log_max_rows"],
        )  # fmt: skip
        self.metrics = Metrics()
        self.auth_required = bool(settings["serve.auth"])
        self.max_rows = int(settings["serve.max_rows"])
        self.max_body = int(settings["serve.max_body_bytes"])
        self.max_concurrency = int(settings["serve.max_concurrency"])
        # requests are admitted by expected queue time, the cap and per-token limits (api/admission.py)
        self.admission = Admission(
            max_queue_ms=float(settings["serve.max_queue_ms"]), max_concurrency=self.max_concurrency,
            per_token=int(settings["serve.max_concurrency_per_token"]),
        )  # fmt: skip
        self._auth_cache: dict[str, Grant] = {}
        self._auth_revision = -1
        self._auth_checked = float("-inf")
        self.oidc = OidcVerifier(settings) if self.auth_required else None  # a bad oidc.yaml stops the worker here
        self.started = False
        prefix = secrets.token_hex(6)  # unique per worker start; a counter makes each id unique within it
        self.request_ids = (f"{prefix}{n:010x}" for n in itertools.count())
        self._describe()

    def _describe(self) -> None:
        m, off = self.metrics, self.offload
        m.gauge("mlbox_prediction_log_backlog", lambda: {(): float(off.backlog)}, "Records waiting to be written.")
        m.gauge(
            "mlbox_prediction_log_dropped", lambda: {(): off.dropped + off.counter("dropped")}, "Records dropped (buffer full)."
        )
        m.gauge("mlbox_prediction_log_written_total", lambda: {(): off.counter("written")}, "Records written.", "counter")
        m.gauge("mlbox_shadow_dropped", lambda: {(): off.counter("shadow_dropped")}, "Shadow copies dropped (queue full).")
        for key, name, text in (
            ("predictions", "mlbox_shadow_predictions_total", "Shadow predictions made, by deployment."),
            ("disagreements", "mlbox_shadow_disagreements_total", "Shadow predictions that disagree with the answer returned."),
            ("errors", "mlbox_shadow_errors_total", "Shadow predictions that failed."),
        ):
            labels = ("deployment", "reason") if key == "errors" else ("deployment",)
            m.gauge(name, functools.partial(self._shadow_series, key), text, "counter", labels)
        m.gauge("mlbox_sidecar_restarts_total", lambda: {(): float(off.restarts)}, "Times the sidecar was started again.", "counter")
        m.gauge("mlbox_requests_in_flight", lambda: {(): float(self.in_flight)}, "Requests being served now.")
        m.gauge(
            "mlbox_jobs",
            lambda: {(("status", s),): float(n) for s, n in self.box.jobs.counts().items()},
            "Jobs in the queue by status (queued = queue depth).",
            labels=("status",), aggregate="box",
        )  # fmt: skip
        m.gauge(
            "mlbox_gpu_allocated",
            lambda: {(("gpu", str(g)),): float(j) for g, j in self.box.jobs.gpu_allocation().items()},
            "GPUs held by running jobs (value: the job id).",
            labels=("gpu",), aggregate="box",
        )  # fmt: skip
        m.gauge(
            "mlbox_deployment_revision",
            lambda: {(("deployment", n),): float(d.deployment.revision) for n, d in self.runtime.live.items()},
            "Revision of each deployment served (with several workers: the oldest any of them still serves).",
            labels=("deployment",), aggregate="min",
        )  # fmt: skip
        m.gauge(
            "mlbox_model_info",
            lambda: {
                (("deployment", d), ("variant", v), ("model", got["model"]), ("provider", got["provider"])): 1.0
                for d, variants in self.runtime.serving().items() for v, got in variants.items()
            },
            "Models served, by deployment and variant, with the onnxruntime execution provider each runs on.",
            labels=("deployment", "variant", "model", "provider"), aggregate="max",
        )  # fmt: skip

        from mlbox.api.monitoring import MonitoringGauges

        MonitoringGauges(self.box).describe(m)

    def _shadow_series(self, key: str) -> dict[Labels, float]:
        series: dict[Labels, float] = {}
        for deployment, counts in self.offload.shadow_counts().items():
            labels: Labels = (("deployment", deployment),)
            series[(*labels, ("reason", "error")) if key == "errors" else labels] = counts.get(key, 0.0)
        return series

    def start(self) -> None:
        self.runtime.start()
        self.offload.start()
        self.metrics.start()
        # the edge protocol of this worker process sheds with it too (api/admission.py), counted as predict 429s
        shed = (("route", "predict"), ("status", "429"))
        self.admission.on_shed = functools.partial(self.metrics.inc, "mlbox_requests_total", shed)
        admission.WORKER = self.admission
        self.started = True

    def close(self) -> None:
        if admission.WORKER is self.admission:
            admission.WORKER = None
        self.runtime.stop()
        self.offload.close()
        self.metrics.close()
        self.box.close()

    @property
    def in_flight(self) -> int:
        """Requests admitted and not answered yet (queued for their turn or running); uploads are not counted."""
        return self.admission.waiting

    def busy(self) -> Overloaded | None:
        """The 429 (with Retry-After) for a request ready to run now when its expected queue time is over
        `serve.max_queue_ms` or `serve.max_concurrency` are admitted, else None; counted by the caller's failed()."""
        return self.admission.refusal()

    def failed(self, route: str, exc: Exception, path: str, deployment: str = "", variant: str = "") -> MlboxError:
        """The error to answer `exc` with, counted (with the deployment and variant when known); anything
        not an MlboxError is logged and becomes a 500."""
        if deployment not in self.runtime.live:  # a name nobody deployed must not become a series of its own
            deployment = variant = ""
        labels = (("deployment", deployment), ("variant", variant))
        if not isinstance(exc, MlboxError):
            log.error("unhandled error on %s", path, exc_info=exc)
            exc = MlboxError("internal error; see the server log")
        self.metrics.inc("mlbox_requests_total", (("route", route), ("status", str(exc.status)), *labels))
        return exc

    def authenticate(
        self, header: str | Sequence[str] | None, action: str, resources: Iterable[tuple[ScopeKind, str]] = ()
    ) -> Actor:
        """The actor behind `Authorization: Bearer <token>` (every value the request sent: a str or a list of
        them), checked for `action` and, for a scoped token, for every (kind, name) in `resources`."""
        grant = self.grant(header, action)
        self.require_scope(grant, resources)
        return grant.actor

    def grant(self, header: str | Sequence[str] | None, action: str) -> Grant:
        """What the request's token grants, checked for `action` (not yet for any resource: see require_scope).
        An `mlbx_` token is cached until meta.db's auth revision moves (read at most every AUTH_RECHECK_SECONDS)
        or it expires; a JWT goes to the OIDC verifier, whose cache drops on any change of oidc.yaml or of an
        issuer's keys. Failures are never cached."""
        if not self.auth_required:
            return Grant(actor=Actor("anonymous", "admin", "system"), token_id="", expires_at=None)
        token = bearer_token(header)
        try:
            grant = self._oidc_grant(token) if self.oidc is not None and looks_like_jwt(token) else self._token_grant(token)
        except AuthError as exc:
            exc.headers.setdefault("WWW-Authenticate", f'{REALM}, error="invalid_token"')
            raise
        except PermissionDenied as exc:  # an OIDC identity whose claims map to no role
            self.box.audit.record_throttled("oidc", "auth.denied", "role mapping", {"via": "http", "reason": exc.message})
            raise
        try:
            require(grant.actor, action)
        except PermissionDenied:
            self.box.audit.record_throttled(grant.actor.name, "auth.denied", action, {"role": grant.actor.role, "via": "http"})
            raise
        return grant

    def require_scope(self, grant: Grant, resources: Iterable[tuple[ScopeKind, str]]) -> None:
        """403 (audited) unless `grant`'s scopes cover every (kind, name); an unscoped grant covers all."""
        denied = refusal(grant.scopes, resources)
        if denied is not None:
            self.box.audit.record_throttled(grant.actor.name, "auth.denied", "scope", {"via": "http", "reason": denied.message})
            raise denied

    def _token_grant(self, token: str) -> Grant:
        now = time.monotonic()
        if now - self._auth_checked >= AUTH_RECHECK_SECONDS:
            revision = self.box.identity.revision()
            if revision != self._auth_revision:
                self._auth_cache.clear()
                self._auth_revision = revision
            self._auth_checked = now
        grant = self._auth_cache.get(token)
        if grant is None:
            grant = self.box.identity.grant(token, touch=False)
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[token] = grant
            # a login by token: audited at most once an hour per token (the cache makes this rare)
            self.box.audit.record_throttled(grant.actor.name, "auth.token_login", grant.token_id, {"via": "http"},
                                            every_s=LOGIN_AUDIT_SECONDS)  # fmt: skip
        elif grant.expired():
            del self._auth_cache[token]
            raise AuthError("this API token has expired", hint="ask an admin for a new one")
        return grant

    def _oidc_grant(self, token: str) -> Grant:
        assert self.oidc is not None

        def login(grant: Grant) -> None:  # a verified (not cached) OIDC token: audited at most once an hour per identity
            self.box.audit.record_throttled(grant.actor.name, "auth.oidc_login", grant.token_id, {"via": "http"},
                                            every_s=LOGIN_AUDIT_SECONDS)  # fmt: skip

        return self.oidc.grant(token, on_verified=login)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        problems = dict(self.runtime.errors)
        if self.started and not self.offload.alive:
            problems["sidecar"] = "the prediction log and shadow process is not running; it is being started again"
        ready = self.started and not problems
        return ready, {"deployments": sorted(self.runtime.live), "models": self.runtime.serving(), "problems": problems}


def bearer_token(header: str | Sequence[str] | None) -> str:
    """The token of an `Authorization: Bearer <token>` request, parsed the same way on every route: exactly one
    Authorization header, the scheme in any case (RFC 7235), the token after it. A 401 names the realm in
    WWW-Authenticate (RFC 6750); more than one header is a 400, since routes could read different ones."""
    values = [header] if isinstance(header, str) else list(header or ())
    if len(values) > 1:
        raise UsageError(
            f"{len(values)} Authorization headers; send exactly one",
            hint="Authorization: Bearer mlbx_...", headers={"WWW-Authenticate": f'{REALM}, error="invalid_request"'},
        )
    value = values[0].strip() if values else ""
    if not value:
        raise AuthError("missing API token", hint=BEARER_HINT, headers={"WWW-Authenticate": REALM})
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(
            f"missing API token: the authorization scheme {scheme[:20]!r} is not supported", hint=BEARER_HINT,
            headers={"WWW-Authenticate": REALM},
        )
    token = token.strip()
    if not token:
        raise AuthError(
            "missing API token after Bearer", hint=BEARER_HINT,
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    return token
