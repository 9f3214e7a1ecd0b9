"""A minimal keep-alive HTTP/1.1 load generator on raw asyncio sockets (loopback only).

    python -m mlbox.bench.loadgen PORT PATH CONCURRENCY SECONDS BODY_FILE [TOKEN]

Prints one JSON line: requests, req/s, p50/p99/max latency in ms, non-200 count. Each
connection sends its next request as soon as the previous answer is complete; the run
ends after SECONDS, preceded by a one-second warm-up.
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
            if now < self.deadline:
                self._send()
            else:
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["open"] -= 1
        if self.stats["open"] == 0 and not self.done.done():
            self.done.set_result(None)


async def run(port: int, path: str, concurrency: int, seconds: float, body: bytes, token: str = "") -> dict[str, Any]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    stats: dict[str, Any] = {"lat": [], "errors": 0, "open": concurrency}
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
            "max_ms": lat[-1] * 1000 if n else float("nan"), "errors": stats["errors"]}  # fmt: skip


def main() -> None:
    port, path, concurrency, seconds, body_file = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    token = sys.argv[6] if len(sys.argv) > 6 else ""
    body = open(body_file, "rb").read()
    gc.disable()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(port, path, concurrency, 1.0, body, token))
    print(json.dumps(asyncio.run(run(port, path, concurrency, seconds, body, token))))


if __name__ == "__main__":
    main()
