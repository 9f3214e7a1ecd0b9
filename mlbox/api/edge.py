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
A body has `serve.body_timeout_s` from the end of its head: a stalled or trickling upload then
gets 408 and its connection is closed (the app's read sees a disconnect), so 64 slow uploads
cost 64 sockets for a bounded time and no slot (the body is read before admission,
api/admission.py). A connection with more than `serve.max_pipelined` requests waiting behind
the one being served (pipelined in one read) is closed.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from mlbox.api import admission
from mlbox.api.asgi import Scope
from mlbox.config import Settings
from mlbox.errors import MlboxError, Overloaded, PermissionDenied

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
    """A 408: the request head (or, after it, the body) was not complete in time."""

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


@functools.lru_cache(maxsize=64)
def _shed_answer(retry_after: int) -> bytes:
    """The 429 the protocol answers with itself while the admitted queue is over `serve.max_queue_ms`."""
    from mlbox.api.asgi import error_body

    body = error_body(Overloaded(
        "the server is overloaded: the requests admitted already would take longer than serve.max_queue_ms",
        hint=f"retry after {retry_after} s",
    ))  # fmt: skip
    return (
        f"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body


def protocol_class(max_header_bytes: int, header_timeout_s: float, body_timeout_s: float = 30.0, max_pipelined: int = 16) -> Any:
    """uvicorn's httptools protocol with a bounded request head (431 past the size, 408 past the time), a body
    timeout (408 and close) and at most `max_pipelined` requests queued behind the one being served."""
    import asyncio

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class EdgeHttpToolsProtocol(HttpToolsProtocol):
        """HttpToolsProtocol bounding each request head and body, counting predict requests ready to run, shedding at heads."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.in_head = True
            self.head_bytes = 0
            self.tail = b""  # the last bytes of the head so far: its end may straddle two reads
            self.head_timer: asyncio.TimerHandle | None = None
            self.body_timer: asyncio.TimerHandle | None = None
            self.in_body = False  # a head is complete and its body is not
            self.shedding = False  # the request being read was answered 429 from its head: its body is skipped
            self.is_predict = False
            self.counted: list[Any] = []  # this connection's predict requests in the worker's `pending`, unanswered

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._disarm_body()
            worker = admission.WORKER
            if worker is not None and self.counted:  # never answered: out of the queue all the same
                worker.pending -= len(self.counted)
                self.counted.clear()
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
            if self.in_body and self.body_timer is None and not self.transport.is_closing():
                # armed only when a read ends inside a body: a request that arrives whole costs no timer
                self.body_timer = self.loop.call_later(body_timeout_s, self._body_timeout)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.head_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self.in_head, self.in_body = False, True
            self._disarm()
            worker = admission.WORKER
            self.is_predict = self.parser.get_method() == b"POST" and self.url.split(b"?", 1)[0].endswith(b"/predict")
            if worker is not None and self.is_predict and worker.overloaded_now() and self._shed(worker):
                return
            super().on_headers_complete()
            if len(self.pipeline) > max_pipelined:  # requests pipelined in one read wait here, parsed, for their turn
                self.transport.close()

        def on_body(self, body: bytes) -> None:
            if not self.shedding:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self.in_head, self.head_bytes, self.tail = True, 0, b""  # the next bytes are the next request's head
            self.in_body = False
            self._disarm_body()
            if self.shedding:  # its 429 is written: the connection waits for its next head
                self.shedding = False
                self._arm()
                return
            cycle, worker = self.cycle, admission.WORKER
            if worker is not None and self.is_predict and cycle is not None and not cycle.response_complete:
                self._count(worker, cycle)
            super().on_message_complete()

        def _count(self, worker: admission.Admission, cycle: Any) -> None:
            """Count a predict request ready to run (its body complete) in `worker.pending` until it is answered."""
            # when it became ready and how many were ready ahead of it: its wait, divided among them, is what one
            # request really cost the loop (api/admission.py `waited`)
            cycle.scope["mlbox.ready"] = (time.perf_counter(), worker.pending)
            worker.pending += 1
            self.counted.append(cycle)
            answered = cycle.on_response

            def on_response() -> None:
                if cycle in self.counted:
                    self.counted.remove(cycle)
                    worker.pending -= 1
                answered()

            cycle.on_response = on_response

        def _shed(self, worker: admission.Admission) -> bool:
            """Answer this predict request 429 from its head alone (no ASGI task: under a flood that is what a
            429 may cost), unless it must wait behind an answer still owed on this connection."""
            if self.cycle is not None and not self.cycle.response_complete:
                return False  # pipelined behind a request being served: answers keep their order
            worker.shed += 1
            worker.on_shed()
            self.shedding = True
            self.transport.write(_shed_answer(admission.retry_after(worker.expected_wait_s())))
            if not self.parser.should_keep_alive():
                self.transport.close()
            return True

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

        def _disarm_body(self) -> None:
            if self.body_timer is not None:
                self.body_timer.cancel()
                self.body_timer = None

        def _body_timeout(self) -> None:
            self.body_timer = None
            if not self.in_body or self.transport.is_closing():
                return
            cycle = self.cycle
            if self.shedding or (cycle is not None and cycle.response_started):  # answered already (a 429): just close
                self.transport.close()
                return
            # the app's read of the body then sees a disconnect, and its answer (if any) goes nowhere
            self._refuse(HeadTimeout(f"request body not complete in {body_timeout_s:g} s", hint="serve.body_timeout_s"))

        def _refuse(self, exc: MlboxError) -> None:
            self._disarm()
            self._disarm_body()
            if not self.transport.is_closing():
                self.transport.write(_head_error(exc))
                self.transport.close()

    return EdgeHttpToolsProtocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `mlbox serve` adds to BentoML's uvicorn.Config: the bounded-head-and-body protocol and the keep-alive timeout."""
    max_bytes, timeout = int(settings["serve.max_header_bytes"]), float(settings["serve.header_timeout_s"])
    options: dict[str, Any] = {"timeout_keep_alive": int(settings["serve.keepalive_timeout_s"])}
    try:
        options["http"] = protocol_class(
            max_bytes, timeout, float(settings["serve.body_timeout_s"]), int(settings["serve.max_pipelined"])
        )
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
