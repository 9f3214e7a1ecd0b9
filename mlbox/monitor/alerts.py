"""Alerts: one WARNING line in the log for every monitoring event, and an optional JSON POST to a checked webhook.

A webhook URL is the classic server-side request forgery hole: whoever writes a policy could make the box
POST to its own admin ports or a cloud metadata service. So the host is resolved once, every address it
resolves to must be public (unless the policy sets `allow_private`), the connection goes to exactly that
address (a DNS answer that changes between check and connect cannot redirect it), redirects are reported,
not followed, and proxies from the environment are not used.

Residency: `alert` takes the box's destination check (`gate`, security/residency.py `Residency.check_url`);
a webhook host outside the box's residency, or of unknown region, without a transfer basis is not posted to.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from mlbox import clock
from mlbox._version import __version__
from mlbox.errors import MlboxError, UsageError

if TYPE_CHECKING:
    from mlbox.monitor.policy import AlertConfig

log = logging.getLogger("mlbox.monitor")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known NAT64 prefix: its low 32 bits are an IPv4 address
MAX_BODY = 4096  # of a receiver's answer kept for the error message
PRIVATE_HINT = "webhooks go to public addresses only; set `allow_private: true` in the policy's alerts to allow this one"


@dataclass(frozen=True, kw_only=True)
class WebhookTarget:
    """A checked webhook URL: its parts and the one address the POST will connect to."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    address: str


@dataclass(frozen=True, kw_only=True)
class WebhookResult:
    """How one POST went: `ok` on a 2xx answer; `status` the HTTP status (None: no answer); `error` one plain sentence."""

    ok: bool
    status: int | None = None
    error: str | None = None
    address: str | None = None
    elapsed_ms: float = 0.0
    region: str | None = None  # where the receiving host lies, as the residency check located it

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_url_syntax(url: str, allow_private: bool = False) -> SplitResult:
    """The URL's parts if it is an http(s) URL with a host and no user info; a literal IP is checked here, names later."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https"):
        raise UsageError(f"webhook URL {url!r} is not http or https", hint="write https://host/path")
    if not parts.hostname:
        raise UsageError(f"webhook URL {url!r} has no host", hint="write https://host/path")
    if not url.isascii():
        raise UsageError(f"webhook URL {url!r} is not ASCII", hint="percent-encode its path (and write the host in punycode)")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"webhook URL {url!r} carries user info before the host", hint="put a receiver's token in the path or query")
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port only when asked
    except ValueError:
        raise UsageError(f"webhook URL {url!r} has an invalid port") from None
    if not allow_private:
        try:
            literal: IPAddress | None = ipaddress.ip_address(parts.hostname)
        except ValueError:
            literal = None
        if literal is not None and (why := forbidden(literal)):
            raise UsageError(f"webhook URL {url!r} points at a {why} address", hint=PRIVATE_HINT)
    return parts


def forbidden(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address (`loopback`, `private`, …), or None when it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        # an IPv4-mapped or NAT64 address is the IPv4 host it carries, whatever the IPv6 prefix's own flags say
        if address.ipv4_mapped is not None:
            return forbidden(address.ipv4_mapped)
        if address in NAT64:
            return forbidden(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and (why := forbidden(address.sixtofour)):
            return why  # 6to4 relays deliver to the embedded IPv4 host
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),  # also Teredo (2001::/32) and the documentation ranges
        ("non-global", not address.is_global),  # shared CGNAT space, benchmark ranges
    )
    return next((name for name, hit in checks if hit), None)


def resolve_webhook(url: str, allow_private: bool) -> WebhookTarget:
    """Check `url` and resolve its host once; every address must be public unless `allow_private`."""
    parts = check_url_syntax(url, allow_private)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"webhook host {host!r} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UsageError(f"webhook host {host!r} does not resolve")
    if not allow_private:
        for text in addresses:
            # one private answer among public ones is enough to refuse: the resolver picks which one we would use
            if why := forbidden(ipaddress.ip_address(text.split("%", 1)[0])):
                raise UsageError(f"webhook host {host!r} resolves to {why} address {text}", hint=PRIVATE_HINT)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookTarget(url=url, scheme=parts.scheme, host=host, port=port, path=path, address=addresses[0])


def check_webhook_url(url: str, allow_private: bool) -> None:
    """Raise a UsageError unless `url` is http(s) and its host resolves only to addresses a webhook may reach."""
    resolve_webhook(url, allow_private)


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a fixed address; the Host header still names the URL's host."""

    def __init__(self, target: WebhookTarget, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed address; SNI and certificate checks use the URL's host name."""

    def __init__(self, target: WebhookTarget, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = target.address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def post_webhook(url: str, payload: Mapping[str, Any], *, allow_private: bool, timeout_s: float = 5.0,
                 context: ssl.SSLContext | None = None) -> WebhookResult:  # fmt: skip
    """POST `payload` as JSON to `url`; never raises on a refused URL or a network failure, returns how it went.

    `context` replaces the default TLS context (system CAs, host name checked), e.g. to trust a private CA.
    """
    started = time.perf_counter()

    def result(ok: bool, status: int | None = None, error: str | None = None, address: str | None = None) -> WebhookResult:
        return WebhookResult(ok=ok, status=status, error=error, address=address, elapsed_ms=1000 * (time.perf_counter() - started))

    try:
        target = resolve_webhook(url, allow_private)
    except UsageError as exc:
        return result(False, error=str(exc))
    body = json.dumps(_finite(payload), separators=(",", ":"), default=str).encode()
    headers = {"Content-Type": "application/json", "User-Agent": f"mlbox/{__version__}", "Content-Length": str(len(body))}
    conn: http.client.HTTPConnection = (
        _PinnedHTTPS(target, timeout_s, context or ssl.create_default_context())
        if target.scheme == "https"
        else _PinnedHTTP(target, timeout_s)
    )
    try:
        conn.request("POST", target.path, body=body, headers=headers)
        answer = conn.getresponse()
        text = answer.read(MAX_BODY).decode("utf-8", "replace").strip()
        status, location = answer.status, answer.getheader("Location")
    except (OSError, http.client.HTTPException, ValueError) as exc:  # socket errors, timeouts, TLS failures, garbled answers
        return result(False, error=f"POST to {target.host} ({target.address}) failed: {exc or type(exc).__name__}", address=target.address)
    finally:
        conn.close()
    if 200 <= status < 300:
        return result(True, status, address=target.address)
    if 300 <= status < 400:
        return result(False, status, f"the webhook answered {status} redirecting to {location!r}; redirects are not followed", target.address)
    return result(False, status, f"the webhook answered {status}{': ' + text[:200] if text else ''}", target.address)


def alert(event: str, deployment: str, details: Mapping[str, Any], config: AlertConfig | None, log: logging.Logger = log,
          *, environ: Mapping[str, str] | None = None,
          gate: Callable[[str], Mapping[str, Any]] | None = None) -> WebhookResult | None:  # fmt: skip
    """Log one WARNING line for `event` on `deployment`; POST it to the configured webhook, if any, and say how that went.

    `environ` resolves a `{"$env": NAME}` webhook reference (pass the settings' environment, not os.environ).
    `gate(url)` is the residency check: it raises to refuse the destination, else returns its audit fields
    (`region`, `transfer_basis`).
    """
    reason = details.get("reason")
    summary = reason if isinstance(reason, str) and reason else json.dumps(_finite(details), default=str)[:500]
    log.warning("monitor %s on %s: %s", event, deployment, summary)
    url = config.url(environ) if config is not None else None
    if config is None or url is None:
        return None
    payload = {"source": "mlbox", "version": __version__, "event": event, "deployment": deployment, "at": clock.iso(), "details": details}
    region = None
    if gate is not None:
        try:
            region = gate(url).get("region")
        except MlboxError as exc:
            refused = WebhookResult(ok=False, error=exc.message)
            if config.webhook_env is not None:
                refused = replace(refused, error=exc.message.replace(url, f"${config.webhook_env}"))
            log.warning("monitor %s on %s: webhook not delivered: %s", event, deployment, refused.error)
            return refused
    outcome = replace(post_webhook(url, payload, allow_private=config.allow_private, timeout_s=config.timeout_s), region=region)
    if not outcome.ok and config.webhook_env is not None and outcome.error:
        # the URL came from the environment: never repeat it (whatever the variable holds) in a log or a result
        outcome = replace(outcome, error=outcome.error.replace(repr(url), f"${config.webhook_env}").replace(url, f"${config.webhook_env}"))
    if not outcome.ok:
        log.warning("monitor %s on %s: webhook not delivered: %s", event, deployment, outcome.error)
    return outcome


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity; a statistic that is one is sent as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
