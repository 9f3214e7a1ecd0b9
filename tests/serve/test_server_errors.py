"""Bad requests against a real `mlbox serve` (through BentoML's fast path): the JSON error envelope, the right
4xx status and never a 500; body limits before reading; 429 with Retry-After at capacity; OpenAPI against the server.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from ._cases import CASES, GOOD, IDS, Case
from .conftest import Server, assert_error, check_documented_operations


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_request_gets_the_error_envelope(shared_server: Server, case: Case) -> None:
    response = shared_server.client.request(case.method, case.path, **case.request(shared_server.tokens))
    assert_error(response, case.status, case.code, case.mentions)


def test_the_server_still_answers_after_the_bad_requests(shared_server: Server) -> None:
    assert shared_server.predict("bad", [GOOD]).status_code == 200
    assert shared_server.client.get("/readyz").status_code == 200
    assert shared_server.proc.poll() is None


def test_every_documented_operation_exists_on_the_server(shared_server: Server) -> None:
    check_documented_operations(shared_server.client, shared_server.tokens)


def test_a_method_the_path_does_not_take_is_405_with_allow(shared_server: Server) -> None:
    response = shared_server.client.put("/v1/deployments/bad/predict", headers=shared_server.auth())
    assert_error(response, 405, "method_not_allowed", ("PUT",))
    assert response.headers["allow"] == "POST"


def test_unknown_route_outside_v1_is_404(shared_server: Server) -> None:
    # every HTTP path is the dispatcher's: BentoML's own pages are not served, unknown paths get the envelope
    assert_error(shared_server.client.get("/no/such/route"), 404, "not_found", ("/no/such/route",))


# raw HTTP: a body that is announced but never (fully) sent ----------------------------------------------


def request_head(server: Server, length: int, role: str = "service") -> bytes:
    return (
        f"POST /v1/deployments/bad/predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.tokens[role]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def envelope(status: int, body: bytes) -> dict[str, object]:
    error = json.loads(body)["error"]
    assert set(error) == {"status", "code", "message", "hint"} and error["status"] == status
    return dict(error)


def test_declared_oversized_body_is_refused_before_it_is_read(shared_server: Server) -> None:
    """A Content-Length of 50 MB with only a few bytes sent: 413 at once, not after waiting for 50 MB."""
    with socket.create_connection(("127.0.0.1", shared_server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(request_head(shared_server, 50 * 1024 * 1024) + b'{"rows": [')
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - started
    assert status == 413
    error = envelope(413, body)
    assert error["code"] == "too_large" and "52428800" in str(error["message"])
    assert elapsed < 1.0, f"413 took {elapsed:.2f} s"


def test_a_request_still_uploading_its_body_holds_no_slot(shared_server: Server) -> None:
    """serve.max_concurrency is 1, yet a request whose body is still arriving does not take the slot: it is
    admitted only once its body is complete (api/admission.py), so the others are served meanwhile."""
    body = json.dumps({"rows": [GOOD]}).encode()
    with socket.create_connection(("127.0.0.1", shared_server.port), timeout=10) as slow:
        slow.sendall(request_head(shared_server, len(body)) + body[:5])
        time.sleep(0.3)  # the server has the headers and waits for the rest of the body
        crowded = [shared_server.predict("bad", [GOOD]) for _ in range(3)]
        slow.sendall(body[5:])
        status, _, answered = read_response(slow)
    assert [r.status_code for r in crowded] == [200, 200, 200]
    assert status == 200 and json.loads(answered)["model"] == "churn:1"
