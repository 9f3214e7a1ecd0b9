"""`RemoteClient`: the `BoxClient` that steers a box it cannot see, through `mlbox serve`'s management API.

`mlbox tui --url https://host:3000 --token-file F` runs the same screens as on the box: every call
is one HTTP request to `/v1/console/...` (mlbox/api/manage.py) with the token, answered by the same
console methods `LocalClient` calls, so what a role may see and change, the masking of protected
fields and the audit entries are the server's, never this client's. TLS is verified (the system's
CAs, or `--cafile` for a box with its own certificate, such as `mlbox auth selfsigned` makes); an
error answer becomes the same `MlboxError` the console raised, with its message and hint.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from mlbox.console.records import PAGE, Me, Page, Pulse, Row, Server, Verified
from mlbox.errors import (
    AuthError, Conflict, MlboxError, NotFound, Overloaded, PayloadTooLarge, PermissionDenied, UsageError,
    ValidationError,
)  # fmt: skip

class Unreachable(MlboxError):
    """No answer from the server: refused, timed out, TLS failed."""

    def __init__(self, url: str, why: str, detail: str) -> None:
        super().__init__(f"cannot reach {url}: {why}", hint=detail[:200] or None)
        self.why = why


_ERRORS: dict[int, type[MlboxError]] = {
    400: UsageError, 401: AuthError, 403: PermissionDenied, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: ValidationError, 429: Overloaded,
}  # fmt: skip


class RemoteClient:
    """A `BoxClient` over HTTP(S): the management API of a remote `mlbox serve`, as a token's user."""

    def __init__(self, url: str, token: str, *, cafile: str | None = None, timeout: float = 30.0) -> None:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url must start with http:// or https://, got {url[:60]!r}")
        self.url = url.rstrip("/")
        verify: Any = True
        if cafile:
            import ssl

            verify = ssl.create_default_context(cafile=cafile)
        self._http = httpx.Client(
            base_url=f"{self.url}/v1/console", headers={"Authorization": f"Bearer {token}"}, verify=verify,
            timeout=timeout, follow_redirects=False, trust_env=False,  # no proxy from the environment: loopback or TLS
        )  # fmt: skip

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        import httpx

        try:
            r = self._http.request(method, path, json=body if method == "POST" else None, params=params or None)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, type(exc).__name__, str(exc)) from None
        if r.status_code >= 400:
            raise _error(r.status_code, r)
        return r.json()

    # reads
    def me(self) -> Me:
        return Me(**self._call("GET", "/me"))

    def pulse(self) -> Pulse:
        """The server's Pulse; a server that cannot be reached is Pulse's `✗ down`, not an error each refresh."""
        try:
            return Pulse.from_json(self._call("GET", "/pulse"))
        except Unreachable as exc:
            down = Server("down", self.url, exc.why)
            return Pulse(box=self.url, server=down, deployments=[], jobs={}, gpus={}, audit=[], verdicts=[])

    def deployments(self) -> list[Row]:
        return list(self._call("GET", "/deployments"))

    def deployment_detail(self, name: str) -> Row:
        return dict(self._call("GET", f"/deployments/{_seg(name)}"))

    def predictions(
        self, name: str, limit: int = PAGE, before: str | None = None, variant: str | None = None, errors: bool = False
    ) -> Row:
        params: dict[str, Any] = {"limit": limit, **({"before": before} if before else {}),
                                  **({"variant": variant} if variant else {}), **({"errors": "true"} if errors else {})}  # fmt: skip
        return dict(self._call("GET", f"/deployments/{_seg(name)}/predictions", **params))

    def jobs(self, limit: int = PAGE) -> Page:
        return Page(**self._call("GET", "/jobs", limit=limit))

    def job_log(self, job_id: int, offset: int = -1, limit: int = 65536) -> Row:
        return dict(self._call("GET", f"/jobs/{int(job_id)}/log", offset=offset, limit=limit))

    def audit(self, limit: int = PAGE) -> Page:
        return Page(**self._call("GET", "/audit", limit=limit))

    def runs(self, limit: int = PAGE) -> Page:
        return Page(**self._call("GET", "/runs", limit=limit))

    def run_detail(self, run_id: str) -> Row:
        return dict(self._call("GET", f"/runs/{_seg(run_id)}"))

    def models(self) -> list[Row]:
        return list(self._call("GET", "/models"))

    def features(self) -> list[Row]:
        return list(self._call("GET", "/features"))

    def view_detail(self, view: str) -> Row:
        return dict(self._call("GET", f"/features/{_seg(view)}"))

    def checks(self, limit: int = PAGE) -> Page:
        return Page(**self._call("GET", "/checks", limit=limit))

    def model_detail(self, ref: str) -> Row:
        return dict(self._call("GET", f"/models/{_seg(ref)}"))

    def check_detail(self, check_id: int) -> Row:
        return dict(self._call("GET", f"/checks/{int(check_id)}"))

    def verify_audit(self) -> Verified:
        return Verified(**self._call("GET", "/audit/verify"))

    def train_spec(self) -> str:
        return str(self._call("GET", "/jobs/train-spec")["spec"])

    # changes
    def set_canary_weight(self, name: str, weight: float, reason: str) -> Row:
        return dict(self._call("POST", f"/deployments/{_seg(name)}/weight", {"weight": weight, "reason": reason}))

    def set_canary(self, name: str, model: str, weight: float, reason: str) -> Row:
        body = {"model": model, "weight": weight, "reason": reason}
        return dict(self._call("POST", f"/deployments/{_seg(name)}/canary", body))

    def rollback(self, name: str, reason: str) -> Row:
        return dict(self._call("POST", f"/deployments/{_seg(name)}/rollback", {"reason": reason}))

    def set_shadow(self, name: str, model: str | None, reason: str) -> Row:
        return dict(self._call("POST", f"/deployments/{_seg(name)}/shadow", {"model": model, "reason": reason}))

    def drift_check(self, name: str) -> Row:
        return dict(self._call("POST", f"/deployments/{_seg(name)}/check", {}))

    def promote_model(self, ref: str, alias: str, expected: int | None, reason: str) -> Row:
        body = {"alias": alias, "expect": expected, "reason": reason}
        return dict(self._call("POST", f"/models/{_seg(ref)}/promote", body))

    def archive_model(self, ref: str, reason: str) -> Row:
        return dict(self._call("POST", f"/models/{_seg(ref)}/archive", {"reason": reason}))

    def cancel_job(self, job_id: int, reason: str) -> Row:
        return dict(self._call("POST", f"/jobs/{int(job_id)}/cancel", {"reason": reason}))

    def retry_job(self, job_id: int, reason: str) -> Row:
        return dict(self._call("POST", f"/jobs/{int(job_id)}/retry", {"reason": reason}))

    def submit_train(self, spec: str, reason: str) -> Row:
        """Queues the server box's own `train.yaml` (`spec` is what `train_spec()` named: a remote client cannot
        point the server at another file)."""
        return dict(self._call("POST", "/jobs/train", {"reason": reason}))


def _seg(name: str) -> str:
    """One path segment: a name with `/`, `%` or `?` in it stays one segment (and is refused by the server's own
    name checks), never a different route."""
    return quote(str(name), safe=":@")


def _error(status: int, response: Any) -> MlboxError:
    """The server's error envelope as the MlboxError it was raised as."""
    try:
        error = response.json()["error"]
        message, hint = str(error["message"]), str(error.get("hint") or "")
    except (ValueError, KeyError, TypeError):
        message, hint = f"HTTP {status} from the server", response.text[:200]
    cls = _ERRORS.get(status, MlboxError)
    return cls(message, hint=hint or None)
