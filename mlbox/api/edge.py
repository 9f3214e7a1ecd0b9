"""The HTTP edge in front of every route: Host/Origin allow-lists and JSON-only bodies on state-changing requests,
and the uvicorn protocol that bounds request heads in size and time.

A browser lets any page POST to a loopback server (a `text/plain` form, a no-cors fetch), and
a DNS-rebound name reaches it with a foreign `Host`; with `serve.auth=false` such a request
would act as an admin. So every POST — predict included — must carry a `Host` naming this
server (loopback names, the address the connection arrived at, or `serve.allowed_hosts`),
no foreign `Origin` (same origin or `serve.allowed_origins`), and a body declared as
`application/json` if its type is declared at all (every form and `text/plain` is 415): auth on or off.

uvicorn's httptools parser (the one BentoML's workers use) has no limit on a request head
and no timeout for one: a 96 MB header is concatenated piece by piece for seconds while the
event loop serves nobody, and an idle or trickling connection is held for ever. The protocol
made by `protocol_class` answers 431 past `serve.max_header_bytes` and 408 when a head is
not complete `serve.header_timeout_s` after the connection (or the previous request) began.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlbox.api.asgi import Scope
from mlbox.config import Settings
from mlbox.errors import MlboxError, PermissionDenied

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "localhost.localdomain", "ip6-localhost"})


class UnsupportedMediaType(MlboxError):
    """A 415: a state-changing request whose body is not declared `application/json`."""

    status = 415
    code = "unsupported_media_type"


class HeadersTooLarge(MlboxError):
    """A 431: the request line and headers are over `serve.max_header_bytes`."""

    status = 431
    code = "headers_too_large"


class HeadTimeout(MlboxError):
    """A 408: the request head was not complete within `serve.header_timeout_s`."""

    status = 408
    code = "request_timeout"


def _names(text: str) -> frozenset[str]:
    return frozenset(part.strip().lower().rstrip("/") for part in text.split(",") if part.strip())


def host_name(host: str) -> str:
    """The name in a `Host` header, without its port: `[::1]:3000` -> `::1`, `Box.lan:80` -> `box.lan`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True)
class EdgePolicy:
    """Which `Host` and `Origin` values a state-changing request may carry (`*` allows any)."""

    hosts: frozenset[str] = frozenset()
    origins: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgePolicy:
        return cls(_names(str(settings["serve.allowed_hosts"])), _names(str(settings["serve.allowed_origins"])))

    def refusal(self, scope: Scope) -> MlboxError | None:
        """Why this POST is refused (403 foreign Host/Origin, 415 not JSON), or None to let it through."""
        host = origin = ctype = fetch_site = None
        for key, value in scope.get("headers", ()):
            if key == b"host":
                host = value.decode("latin-1")
            elif key == b"origin":
                origin = value.decode("latin-1")
            elif key == b"content-type":
                ctype = value.decode("latin-1")
            elif key == b"sec-fetch-site":
                fetch_site = value.decode("latin-1").lower()
        if host is not None and not self._host_allowed(host_name(host), scope):
            return PermissionDenied(
                f"Host {host!r:.80} is not a name of this server", hint="add it to serve.allowed_hosts"
            )
        if origin is not None:
            if not self._origin_allowed(origin, host, scope):
                return PermissionDenied(
                    f"cross-site request from Origin {origin!r:.80} refused", hint="add it to serve.allowed_origins"
                )
        elif fetch_site == "cross-site" and "*" not in self.origins:
            return PermissionDenied("cross-site request refused", hint="send it from an origin in serve.allowed_origins")
        if ctype is None:
            # No declared type is read as JSON: a browser cannot send a body without one except a
            # typeless Blob, and that carries an Origin (checked above); scripts and curl may omit it.
            return None
        media, _, params = ctype.partition(";")
        charset = params.strip().lower()
        if media.strip().lower() != "application/json" or charset not in ("", "charset=utf-8", 'charset="utf-8"'):
            return UnsupportedMediaType(
                f"Content-Type {ctype!r:.80} is not accepted", hint="send JSON as Content-Type: application/json"
            )
        return None

    def _host_allowed(self, name: str, scope: Scope) -> bool:
        if name in LOOPBACK_HOSTS or name in self.hosts or "*" in self.hosts:
            return True
        server = scope.get("server")
        return server is not None and name == str(server[0]).lower()  # the address this connection arrived at

    def _origin_allowed(self, origin: str, host: str | None, scope: Scope) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins or "*" in self.origins:
            return True
        scheme = str(scope.get("scheme", "http"))
        return host is not None and origin == f"{scheme}://{host.strip().lower()}"  # same origin


def _head_error(exc: MlboxError) -> bytes:
    from mlbox.api.asgi import error_body

    body = error_body(exc)
    return (
        f"HTTP/1.1 {exc.status} {'Request Header Fields Too Large' if exc.status == 431 else 'Request Timeout'}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("latin-1") + body


def protocol_class(max_header_bytes: int, header_timeout_s: float) -> Any:
    """uvicorn's httptools protocol with a bounded request head (431 past the size, 408 past the time)."""
    import asyncio

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class EdgeHttpToolsProtocol(HttpToolsProtocol):
        """HttpToolsProtocol counting the bytes of each request head and timing it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.in_head = True
            self.head_bytes = 0
            self.tail = b""  # the last bytes of the head so far: its end may straddle two reads
            self.head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.in_head:
                room = max_header_bytes - self.head_bytes
                # one read may hold a whole small head and the start of its body: only a head that does
                # not end within the room left is over the limit
                if len(data) > room and b"\r\n\r\n" not in self.tail + data[: max(room, 0)]:
                    # refused before the parser sees it: concatenating a huge header is what stalls the loop
                    self._refuse(HeadersTooLarge(f"request head over {max_header_bytes} bytes", hint="serve.max_header_bytes"))
                    return
                self.head_bytes += len(data)
                self.tail = (self.tail + data)[-3:]
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.head_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self.in_head = False
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.in_head, self.head_bytes, self.tail = True, 0, b""  # the next bytes are the next request's head
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.in_head:
                self._arm()  # the next head (if any comes before the keep-alive timeout) has the same bound

        def _arm(self) -> None:
            self._disarm()
            self.head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_timeout(self) -> None:
            self.head_timer = None
            if self.in_head and not self.transport.is_closing():
                if self.head_bytes:  # a started head gets an answer; an idle connection is just closed
                    self._refuse(HeadTimeout(f"request head not complete in {header_timeout_s:g} s", hint="serve.header_timeout_s"))
                else:
                    self.transport.close()

        def _refuse(self, exc: MlboxError) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(_head_error(exc))
                self.transport.close()

    return EdgeHttpToolsProtocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `mlbox serve` adds to BentoML's uvicorn.Config: the bounded-head protocol and the keep-alive timeout."""
    max_bytes, timeout = int(settings["serve.max_header_bytes"]), float(settings["serve.header_timeout_s"])
    options: dict[str, Any] = {"timeout_keep_alive": int(settings["serve.keepalive_timeout_s"])}
    try:
        options["http"] = protocol_class(max_bytes, timeout)
    except ImportError:  # no httptools: h11 bounds the head itself (it has no head timeout)
        options.update(http="h11", h11_max_incomplete_event_size=max_bytes)
    return options


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches only this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name resolving elsewhere, or a wildcard such as 0.0.0.0 (not parsed as loopback)
