"""A real `mlbox serve` under attack: slowloris heads, a flood of requests, raw traversal paths, pickle bodies.

A smoke check that the server survives (admission, 429 and upload limits are tested with the HTTP
edge): while 150 connections trickle their heads one byte at a time and 300 requests arrive at
once, another client still gets /healthz; afterwards /healthz and /readyz answer and predictions work.
One server for the module.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from ..conftest import OS_USER
from ..serve._cases import GOOD
from ..serve.conftest import Server, Template, copy_box, open_box, running_server, serve_template
from ._hostile import tree

__all__ = ["serve_template"]


@pytest.fixture(scope="module")
def server(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = copy_box(serve_template, tmp_path_factory.mktemp("hostile-serve") / "box")
    with open_box(home) as box:
        box.deployments.create("bad", "churn:1", OS_USER)
    with running_server(home, serve_template.tokens) as s:
        yield s


def raw(server: Server, request: bytes, timeout: float = 5) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        with contextlib.suppress(TimeoutError):
            while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.partition(b"\r\n\r\n")[2]


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def healthy(server: Server, timeout: float = 3) -> bool:
    with httpx.Client(base_url=server.url, timeout=timeout) as fresh:
        return fresh.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", [
    "/v1/deployments/../../../etc/passwd", "/v1/deployments/..%2f..%2fetc%2fpasswd", "/v1/deployments/%252e%252e%252f",
    "/../../etc/passwd", "/v1/deployments/..\\..\\x", "/v1/deployments/x%00y", "//etc/passwd", "/v1/deployments/" + "a" * 4000,
])  # fmt: skip
def test_raw_traversal_paths_get_an_envelope(server: Server, serve_template: Template, path: str) -> None:
    auth = f"Authorization: Bearer {serve_template.tokens['admin']}\r\n".encode()
    status, body = raw(server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + auth + b"Connection: close\r\n\r\n")
    assert status in (400, 404, 414), (status, body[:200])
    if body.startswith(b"{"):
        assert orjson.loads(body)["error"]["status"] == status
    assert b"root:" not in body


@pytest.mark.parametrize("content_type", ["application/python-pickle", "application/octet-stream", "text/plain"])
def test_pickle_bodies_are_refused_by_the_real_server(server: Server, content_type: str) -> None:
    marker = server.home.parent / "PWNED"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    r = server.client.post("/v1/deployments/bad/predict", content=pickle.dumps(Payload()),
                           headers={**server.auth("service"), "Content-Type": content_type})  # fmt: skip
    assert r.status_code == 415 and r.json()["error"]["status"] == 415
    assert not marker.exists()


def test_slowloris_and_a_flood_leave_the_server_serving(server: Server) -> None:
    outside = tree(server.home.parent, skip=server.home)
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def trickle() -> None:  # 150 heads, one byte per connection every 0.2 s
        for _ in range(150):
            with contextlib.suppress(OSError):
                s = socket.create_connection(("127.0.0.1", server.port), timeout=2)
                s.sendall(b"POST /v1/deployments/bad/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                sockets.append(s)
        while not stop.is_set():
            for s in list(sockets):
                with contextlib.suppress(OSError):
                    s.sendall(b"X")
            time.sleep(0.2)

    slow = threading.Thread(target=trickle, daemon=True)
    slow.start()
    time.sleep(1.0)
    try:
        assert healthy(server), "slowloris heads locked out a fresh client"

        def hit(i: int) -> int:
            try:
                with httpx.Client(base_url=server.url, timeout=20) as c:
                    return c.post("/v1/deployments/bad/predict", json={"rows": [GOOD]}, headers=server.auth("service")).status_code
            except httpx.TransportError:
                return 0

        with ThreadPoolExecutor(50) as pool:
            flood = [pool.submit(hit, i) for i in range(300)]
            assert healthy(server, timeout=10), "a flood kept /healthz from another client"
            codes = [f.result() for f in flood]
        assert set(codes) <= {200, 429, 503, 0} and codes.count(200) > 0, sorted(set(codes))
    finally:
        stop.set()
        slow.join(timeout=5)
        for s in sockets:
            s.close()
    assert healthy(server) and server.client.get("/readyz").status_code == 200
    assert server.predict("bad", [GOOD]).status_code == 200
    assert server.proc.poll() is None
    assert tree(server.home.parent, skip=server.home) == outside
