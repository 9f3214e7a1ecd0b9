"""`LocalClient`: the `BoxClient` that reads and changes the box on this machine, as the OS user (or a token's user).

It opens the box afresh for each call, in the calling worker thread, and closes it before
returning: it never keeps a database open between refreshes, so it never holds a lock `mlbox serve`
or the worker waits on. What each call does is the console's (mlbox/console/service.py).
"""

from __future__ import annotations

import dataclasses
import ssl
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from mlbox.console.records import PAGE, Me, Page, Pulse, Row, Server, Verified
from mlbox.console.service import Console, TrafficCache, disk_use

if TYPE_CHECKING:
    from mlbox.box import Box
    from mlbox.config import Settings
    from mlbox.types import Actor

T = TypeVar("T")


class LocalClient:
    """A `BoxClient` reading and changing the box on this machine, as the effective OS user."""

    def __init__(self, settings: Settings, *, token: str | None = None, os_user: str | None = None) -> None:
        """Act as `token`'s user when given (as `mlbox --token-file`/MLBOX_TOKEN do), else as the OS user
        (`os_user`, default the effective one from the kernel)."""
        self.settings = settings
        self._token = token
        self._os_user = os_user
        self._traffic: TrafficCache = {}

    def _run(self, work: Callable[[Console], T]) -> T:
        """`work` on a console over the box, opened for this call only and closed before returning."""
        from mlbox.box import Box

        box = Box(self.settings)
        try:
            return work(Console(box, self._actor(box), via="tui"))
        finally:
            box.close()

    def _actor(self, box: Box) -> Actor:
        if self._token:
            grant = box.identity.grant(self._token, touch=False)  # a refresh every few seconds is not a login
            if grant.scopes is not None:
                from mlbox.errors import PermissionDenied

                raise PermissionDenied(
                    f"{grant.actor.name}'s token is scoped; the TUI reads the whole box", hint="use an unscoped token"
                )
            return grant.actor
        return box.identity.actor_for_os_user(self._os_user or _os_user())

    def me(self) -> Me:
        return self._run(Console.me)

    def pulse(self) -> Pulse:
        server = probe(self.settings)
        pulse = self._run(lambda c: c.pulse(server, self._traffic, disk=False))
        # measured once closed: our own connection's WAL file is not the box's size
        return dataclasses.replace(pulse, disk=disk_use(self.settings.home))

    def deployments(self) -> list[Row]:
        return self._run(Console.deployments)

    def jobs(self, limit: int = PAGE) -> Page:
        return self._run(lambda c: c.jobs(limit))

    def audit(self, limit: int = PAGE) -> Page:
        return self._run(lambda c: c.audit(limit))

    def runs(self, limit: int = PAGE) -> Page:
        return self._run(lambda c: c.runs(limit))

    def models(self) -> list[Row]:
        return self._run(Console.models)

    def features(self) -> list[Row]:
        return self._run(Console.features)

    def checks(self, limit: int = PAGE) -> Page:
        return self._run(lambda c: c.checks(limit))

    def verify_audit(self) -> Verified:
        return self._run(Console.verify_audit)

    def job_log(self, job_id: int, offset: int = -1, limit: int = 65536) -> Row:
        return self._run(lambda c: c.job_log(job_id, offset, limit))

    def run_detail(self, run_id: str) -> Row:
        return self._run(lambda c: c.run_detail(run_id))

    def deployment_detail(self, name: str) -> Row:
        return self._run(lambda c: c.deployment_detail(name))

    def predictions(
        self, name: str, limit: int = PAGE, before: str | None = None, variant: str | None = None, errors: bool = False
    ) -> Row:
        return self._run(lambda c: c.predictions(name, limit, before, variant, errors))

    def view_detail(self, view: str) -> Row:
        return self._run(lambda c: c.view_detail(view))

    def check_detail(self, check_id: int) -> Row:
        return self._run(lambda c: c.check_detail(check_id))

    def model_detail(self, ref: str) -> Row:
        return self._run(lambda c: c.model_detail(ref))

    def set_canary_weight(self, name: str, weight: float, reason: str) -> Row:
        return self._run(lambda c: c.set_canary_weight(name, weight, reason))

    def set_canary(self, name: str, model: str, weight: float, reason: str) -> Row:
        return self._run(lambda c: c.set_canary(name, model, weight, reason))

    def rollback(self, name: str, reason: str) -> Row:
        return self._run(lambda c: c.rollback(name, reason))

    def set_shadow(self, name: str, model: str | None, reason: str) -> Row:
        return self._run(lambda c: c.set_shadow(name, model, reason))

    def promote_model(self, ref: str, alias: str, expected: int | None, reason: str) -> Row:
        return self._run(lambda c: c.promote_model(ref, alias, expected, reason))

    def archive_model(self, ref: str, reason: str) -> Row:
        return self._run(lambda c: c.archive_model(ref, reason))

    def cancel_job(self, job_id: int, reason: str) -> Row:
        return self._run(lambda c: c.cancel_job(job_id, reason))

    def retry_job(self, job_id: int, reason: str) -> Row:
        return self._run(lambda c: c.retry_job(job_id, reason))

    def train_spec(self) -> str:
        return str(self.settings.home / "train.yaml")

    def submit_train(self, spec: str, reason: str) -> Row:
        return self._run(lambda c: c.submit_train(spec, reason))

    def drift_check(self, name: str) -> Row:
        return self._run(lambda c: c.drift_check(name))


def _os_user() -> str:
    from mlbox.security import osuser

    return osuser.effective_os_user()


def probe(settings: Settings, timeout: float = 0.5) -> Server:
    """GET /readyz on the box's serve address: `up` when it answers 200, else `down` with why."""
    host, port = str(settings["serve.host"]), int(settings["serve.port"])
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # a wildcard bind answers on loopback
    tls = bool(settings["serve.ssl_certfile"])
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    # readiness only: no token or data is sent, so an unverified TLS handshake leaks nothing
    context = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout, context=context) as r:  # noqa: S310 (http(s) only)
            return Server("up" if r.status == 200 else "down", url, f"readyz {r.status}")
    except OSError as exc:
        return Server("down", url, type(getattr(exc, "reason", exc)).__name__)
