"""A minimal keep-alive HTTP/1.1 load generator on raw asyncio sockets (loopback only).

    python -m mlbox.bench.loadgen PORT PATH CONCURRENCY SECONDS BODY_FILE [TOKEN]
    python -m mlbox.bench.loadgen PORT PATH --rate RATE SECONDS BODY_FILE [TOKEN]

Prints one JSON line: requests, req/s, p50/p99/max latency in ms, non-200 count (`errors`) and how
many of those were 429 (`shed`). Closed
loop (CONCURRENCY): each connection sends its next request as soon as the previous answer
is complete; the run ends after SECONDS, preceded by a one-second warm-up. Open loop
(`--rate`): request i is due at i/RATE seconds whatever the server does, sent on an idle
keep-alive connection or a new one, and its latency counts from when it was due (no
coordinated omission); the answers are split into 200s, 429s and anything else.
"""

from __future__ import annotations

import asyncio
import gc
import json
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


class _OpenConn(asyncio.Protocol):
    """One keep-alive connection of the open-loop generator: one request at a time, back to the idle pool after."""

    def __init__(self, flood: _Flood) -> None:
        self.flood = flood
        self.buf = bytearray()
        self.due = 0.0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, due: float) -> None:
        self.due = due
        self.transport.write(self.flood.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buf[:head_end]).lower()
        at = head.find(b"content-length:")
        end = head_end + 4 + (int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0)
        if len(self.buf) < end:
            return
        del self.buf[:end]
        self.flood.answered(self, int(head[9:12]), time.perf_counter() - self.due)

    def connection_lost(self, exc: Exception | None) -> None:
        self.flood.lost(self)


class _Flood:
    """Open-loop state: the idle connections, the answers by kind, and requests still unanswered."""

    def __init__(self, request: bytes, deadline: float) -> None:
        self.request, self.deadline = request, deadline
        self.idle: list[_OpenConn] = []
        self.busy: set[_OpenConn] = set()
        self.ok: list[float] = []
        self.shed: list[float] = []
        self.errors = 0
        self.outstanding = 0

    def answered(self, conn: _OpenConn, status: int, seconds: float) -> None:
        self.outstanding -= 1
        self.busy.discard(conn)
        (self.ok if status == 200 else self.shed if status == 429 else []).append(seconds)
        if status not in (200, 429):
            self.errors += 1
        self.idle.append(conn)

    def lost(self, conn: _OpenConn) -> None:
        if conn in self.busy:  # closed before its answer: an error
            self.busy.discard(conn)
            self.outstanding -= 1
            self.errors += 1
        if conn in self.idle:
            self.idle.remove(conn)


async def _send_on_new(loop: asyncio.AbstractEventLoop, state: _Flood, port: int, due: float) -> None:
    try:
        _, conn = await loop.create_connection(lambda: _OpenConn(state), "127.0.0.1", port)
    except OSError:
        state.outstanding -= 1
        state.errors += 1
        return
    state.busy.add(conn)
    conn.send(due)


async def flood(port: int, path: str, rate: float, seconds: float, body: bytes, token: str = "") -> dict[str, Any]:
    """Requests due at `rate` per second for `seconds`, each sent when due; then every answer is awaited."""
    request = post_request(port, path, body, token)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    state = _Flood(request, started + seconds)
    for _ in range(PREOPEN):  # connected before the clock starts: a connect is not a request's latency
        state.idle.append((await loop.create_connection(lambda: _OpenConn(state), "127.0.0.1", port))[1])
    started = time.perf_counter()
    state.deadline = started + seconds
    sent = 0
    lags: list[float] = []  # how late each request left this process: the client's own share of a latency
    connecting: set[asyncio.Task[None]] = set()
    while (now := time.perf_counter()) < state.deadline:
        due_count = int((now - started) * rate) - sent
        for _ in range(due_count):
            due = started + sent / rate
            sent += 1
            state.outstanding += 1
            if state.idle:
                conn = state.idle.pop()
                state.busy.add(conn)
                conn.send(due)
                lags.append(time.perf_counter() - due)
            else:  # the client never waits for the server: one more connection, the schedule going on meanwhile
                connecting.add(loop.create_task(_send_on_new(loop, state, port, due)))
                connecting = {t for t in connecting if not t.done()}
        await asyncio.sleep(0.0005)
    end = time.perf_counter() + 30
    while state.outstanding > 0 and time.perf_counter() < end:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    for conn in [*state.idle, *state.busy]:
        conn.transport.close()
    ok = sorted(state.ok)
    n = len(ok)

    def pct(p: float) -> float:
        return ok[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    return {"rate": rate, "requests": sent, "ok": n, "shed": len(state.shed), "errors": state.errors + state.outstanding,
            "ok_rps": n / elapsed, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": ok[-1] * 1000 if n else float("nan"),
            "shed_p99_ms": sorted(state.shed)[int(0.99 * len(state.shed))] * 1000 if state.shed else float("nan"),
            "send_lag_p99_ms": sorted(lags)[int(0.99 * len(lags))] * 1000 if lags else float("nan")}  # fmt: skip


def main() -> None:
    port, path, third = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    open_loop = third == "--rate"
    args = sys.argv[4:] if open_loop else sys.argv[3:]
    level, seconds, body_file = float(args[0]), float(args[1]), args[2]
    token = args[3] if len(args) > 3 else ""
    body = open(body_file, "rb").read()
    gc.disable()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if open_loop:
        print(json.dumps(asyncio.run(flood(port, path, level, seconds, body, token))))
        return
    asyncio.run(run(port, path, int(level), 1.0, body, token))
    print(json.dumps(asyncio.run(run(port, path, int(level), seconds, body, token))))


if __name__ == "__main__":
    main()
