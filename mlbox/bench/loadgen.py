"""A minimal keep-alive HTTP/1.1 load generator on raw sockets (loopback only).

    python -m mlbox.bench.loadgen PORT PATH CONCURRENCY SECONDS BODY_FILE [TOKEN]
    python -m mlbox.bench.loadgen PORT PATH --rate RATE SECONDS BODY_FILE [TOKEN] [--spin]

Prints one JSON line: requests, req/s, p50/p99/max latency in ms, non-200 count (`errors`) and how
many of those were 429 (`shed`). Closed
loop (CONCURRENCY): each connection sends its next request as soon as the previous answer
is complete; the run ends after SECONDS, preceded by a one-second warm-up. Open loop
(`--rate`): request i is due at i/RATE seconds whatever the server does, sent on an idle
keep-alive connection or a new one, and its latency counts from when it was due (no
coordinated omission); the answers are split into 200s, 429s and anything else. The closed
loop runs on asyncio protocols; the open loop on one epoll loop (see `flood`), and `--spin` makes it
busy-poll so each request leaves when due (give it a CPU of its own).
"""

from __future__ import annotations

import asyncio
import gc
import json
import select
import socket
import sys
import time
from typing import Any


class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, stats: dict[str, Any], deadline: float, done: asyncio.Future[None]) -> None:
        self.request, self.stats, self.deadline, self.done = request, stats, deadline, done
        self.buf = bytearray()
        self.t0 = 0.0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.t0 = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buf[:head_end]).lower()
            at = head.find(b"content-length:")
            if at < 0:
                return
            end = head_end + 4 + int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end:
                return
            status = int(head[9:12])
            del self.buf[:end]
            now = time.perf_counter()
            self.stats["lat"].append(now - self.t0)
            if status != 200:
                self.stats["errors"] += 1
                self.stats["shed"] += status == 429
            if now < self.deadline:
                self._send()
            else:
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["open"] -= 1
        if self.stats["open"] == 0 and not self.done.done():
            self.done.set_result(None)


def post_request(port: int, path: str, body: bytes, token: str = "") -> bytes:
    """The bytes of one keep-alive JSON POST, sent as they are on every request of a run."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def run(port: int, path: str, concurrency: int, seconds: float, body: bytes, token: str = "") -> dict[str, Any]:
    request = post_request(port, path, body, token)
    loop = asyncio.get_running_loop()
    stats: dict[str, Any] = {"lat": [], "errors": 0, "shed": 0, "open": concurrency}
    done: asyncio.Future[None] = loop.create_future()
    started = time.perf_counter()
    deadline = started + seconds
    for _ in range(concurrency):
        await loop.create_connection(lambda: _Conn(request, stats, deadline, done), "127.0.0.1", port)
    await asyncio.wait_for(done, seconds + 30)
    elapsed = time.perf_counter() - started
    lat = sorted(stats["lat"])
    n = len(lat)

    def pct(p: float) -> float:
        return lat[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    return {"concurrency": concurrency, "requests": n, "rps": n / elapsed, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "max_ms": lat[-1] * 1000 if n else float("nan"), "errors": stats["errors"], "shed": stats["shed"]}  # fmt: skip


PREOPEN = 256  # open-loop connections opened before the run; more are opened when all are busy


class _Sock:
    """One keep-alive connection of the open-loop generator: one request at a time, back to the idle pool after."""

    __slots__ = ("sock", "buf", "due", "open", "connected")

    def __init__(self, sock: socket.socket, connected: bool) -> None:
        self.sock, self.buf, self.due, self.open, self.connected = sock, bytearray(), 0.0, True, connected


def _answer(buf: bytearray) -> int:
    """The status of the complete answer at the start of `buf` (removed from it), or 0 while it is incomplete."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return 0
    head = bytes(buf[:head_end]).lower()
    at = head.find(b"content-length:")
    end = head_end + 4 + (int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0)
    if len(buf) < end:
        return 0
    del buf[:end]
    return int(head[9:12])


class _Flood:
    """The open loop's state: the schedule, the connections (idle ones in a pool), and the answers by kind.

    One epoll loop over non-blocking sockets, not asyncio: at several thousand requests a second an
    asyncio loop is itself the bottleneck and sends late (its timers are whole milliseconds under uvloop,
    so requests left in bursts, each burst's last one up to a millisecond late: the client's delay, counted
    as the server's). Due requests are sent between any two answers read, so a burst of answers does not
    hold them back, and an answer's time is when the poll that reported it returned (every answer in one
    poll had arrived by then; reading them one by one would add the reading to the later ones).
    """

    def __init__(self, port: int, request: bytes, rate: float, seconds: float, preopen: int = PREOPEN) -> None:
        self.port, self.request, self.rate = port, request, rate
        self.poller = select.epoll()
        self.conns: dict[int, _Sock] = {}
        self.idle = [self._connect(blocking=True) for _ in range(preopen)]  # before the clock: a connect is no latency
        self.ok: list[float] = []
        self.shed: list[float] = []
        self.lags: list[float] = []  # how late each request left this process: the client's own share of a latency
        self.errors = self.outstanding = self.sent = 0
        self.started = time.perf_counter()
        self.deadline = self.started + seconds
        self.due = self.started

    def _connect(self, blocking: bool = False) -> _Sock:
        """A new connection; during the run a non-blocking connect, its request sent once it is writable."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if blocking:
            sock.connect(("127.0.0.1", self.port))
        sock.setblocking(False)
        connected = blocking or sock.connect_ex(("127.0.0.1", self.port)) == 0
        conn = self.conns[sock.fileno()] = _Sock(sock, connected)
        self.poller.register(sock.fileno(), select.EPOLLIN | (0 if connected else select.EPOLLOUT))
        return conn

    def send_due(self, now: float) -> None:
        """Send every request due by `now`, each on an idle connection or, when none is, a new one."""
        while self.due <= now and self.due < self.deadline:
            due, self.sent = self.due, self.sent + 1
            self.due = self.started + self.sent / self.rate
            while self.idle and not self.idle[-1].open:  # closed by the server while idle
                self.idle.pop()
            try:
                conn = self.idle.pop() if self.idle else self._connect()  # the client never waits for the server
            except OSError:
                self.errors += 1
                continue
            conn.due = due
            self.outstanding += 1
            if conn.connected:  # else sent once its connect completes (`read`)
                try:
                    self._send(conn)
                except OSError:
                    self._lost(conn)

    def _send(self, conn: _Sock) -> None:
        if conn.sock.send(self.request) < len(self.request):  # an idle connection's send buffer is empty: never short
            raise OSError("short send")
        self.lags.append(time.perf_counter() - conn.due)

    def read(self, fd: int, events: int, polled: float) -> None:
        """Handle one socket the poll reported at `polled`: its connect completing, or (part of) an answer."""
        conn = self.conns.get(fd)
        if conn is None:
            return
        if not conn.connected and events & select.EPOLLOUT:
            conn.connected = True
            self.poller.modify(fd, select.EPOLLIN)
            try:
                self._send(conn)
            except OSError:
                self._lost(conn)
            return
        try:
            data = conn.sock.recv(65536)
        except OSError:
            data = b""
        if not data:  # closed (before its answer, if one was due: an error)
            self._lost(conn)
            return
        conn.buf += data
        status = _answer(conn.buf)
        if not status:
            return
        if status in (200, 429):
            (self.ok if status == 200 else self.shed).append(polled - conn.due)
        else:
            self.errors += 1
        self.outstanding -= 1
        conn.due = 0.0
        self.idle.append(conn)

    def _lost(self, conn: _Sock) -> None:
        if conn.due:
            self.errors += 1
            self.outstanding -= 1
        self.close(conn)

    def close(self, conn: _Sock) -> None:
        if self.conns.pop(conn.sock.fileno(), None) is not None:
            self.poller.unregister(conn.sock.fileno())
        conn.sock.close()
        conn.open = False


def flood(
    port: int, path: str, rate: float, seconds: float, body: bytes, token: str = "", spin: bool = False, preopen: int = PREOPEN
) -> dict[str, Any]:
    """Requests due at `rate` per second for `seconds`, each sent when due; then every answer is awaited.

    `spin` polls without sleeping, as wrk2 does: a request leaves within microseconds of when it is
    due. Use it only with a CPU of its own (the overload bench pins one); without, the poll sleeps
    until the next request is due, to the millisecond.
    """
    state = _Flood(port, post_request(port, path, body, token), rate, seconds, preopen)
    give_up = state.deadline + 30
    while True:
        now = time.perf_counter()
        state.send_due(now)
        if (state.due >= state.deadline and state.outstanding == 0) or now > give_up:
            break
        timeout = 0.0 if spin else max(0.0, state.due - now) if state.due < state.deadline else 0.005
        events = state.poller.poll(timeout)
        polled = time.perf_counter()
        for fd, mask in events:
            state.send_due(time.perf_counter())  # a burst of answers does not hold a due request back
            state.read(fd, mask, polled)
    elapsed = time.perf_counter() - state.started
    for conn in list(state.conns.values()):
        state.close(conn)
    state.poller.close()
    ok, shed = sorted(state.ok), sorted(state.shed)
    n = len(ok)
    return {"rate": rate, "requests": state.sent, "ok": n, "shed": len(shed), "errors": state.errors + state.outstanding,
            "ok_rps": n / elapsed, "p50_ms": _pct(ok, 0.5), "p99_ms": _pct(ok, 0.99), "max_ms": ok[-1] * 1000 if n else float("nan"),
            "shed_p99_ms": _pct(shed, 0.99), "send_lag_p99_ms": _pct(sorted(state.lags), 0.99), "spin": spin}  # fmt: skip


def _pct(ordered: list[float], p: float) -> float:
    """The p-quantile of sorted seconds, in ms (NaN when there are none)."""
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else float("nan")


def main() -> None:
    port, path, third = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    open_loop = third == "--rate"
    args = sys.argv[4:] if open_loop else sys.argv[3:]
    level, seconds, body_file = float(args[0]), float(args[1]), args[2]
    token = args[3] if len(args) > 3 and args[3] != "--spin" else ""
    body = open(body_file, "rb").read()
    gc.disable()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if open_loop:
        print(json.dumps(flood(port, path, level, seconds, body, token, spin="--spin" in sys.argv)))
        return
    asyncio.run(run(port, path, int(level), 1.0, body, token))
    print(json.dumps(asyncio.run(run(port, path, int(level), seconds, body, token))))


if __name__ == "__main__":
    main()
