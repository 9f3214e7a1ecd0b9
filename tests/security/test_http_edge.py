"""The hardened HTTP edge: invalid Unicode is a 400 and out-of-range integers a 422 on every JSON route,
Host/Origin allow-lists and JSON-only bodies on every POST (auth on or off), bounded request heads on a
real `mlbox serve`, and the bind address with its warning.

In-process tests drive mlbox's app through httpx.ASGITransport (the server address is `mlbox.test`);
the head tests start one real `mlbox serve` and talk to it over raw sockets, as an attacker would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlbox.api.app import build_app
from mlbox.api.context import ServeContext
from mlbox.api.edge import EdgePolicy, host_name, is_loopback
from mlbox.config import load_settings

from ..conftest import MLBOX_SCRIPT, OS_USER
from ..serve._cases import GOOD
from ..serve.conftest import (
    AsgiClient, Server, Template, assert_error, copy_box, free_port, open_box, running_server, serve_template, subprocess_env,
)  # fmt: skip

__all__ = ["serve_template"]  # the session fixture, shared with tests/serve

BELOW_INT64 = "-9223372036854775809"  # orjson reads it as the float -2**63: once aliased to INT64_MIN
ABOVE_INT64 = "9223372036854775808"
PROFILE = ('{"customer_id": 7, "updated_at": "2026-01-01T00:00:00Z", "age": 30, "plan": "basic", '
           '"region": null, "monthly_charges": 12.5, "email": null}')  # fmt: skip
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def edge_home(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = copy_box(serve_template, tmp_path_factory.mktemp("edge") / "box")
    with open_box(home) as box:
        box.deployments.create("bad", "churn:1", OS_USER)
        box.deployments.create("fs", "churn_fs:1", OS_USER)
    return home


@contextlib.contextmanager
def app_client(home: Path, **environ: str) -> Iterator[AsgiClient]:
    ctx = ServeContext(load_settings(home, environ=environ))
    ctx.start()
    try:
        yield AsgiClient(build_app(ctx))
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def api(edge_home: Path) -> Iterator[AsgiClient]:
    with app_client(edge_home) as client:
        yield client


@pytest.fixture(scope="module")
def open_api(edge_home: Path) -> Iterator[AsgiClient]:
    """serve.auth = false: every caller is an admin, so the edge checks are all that stands."""
    with app_client(edge_home, MLBOX_SERVE_AUTH="false") as client:
        yield client


def admin(template: Template, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {template.tokens['admin']}", **JSON, **extra}


def revision(home: Path, name: str) -> int:
    with open_box(home) as box:
        return box.deployments.get(name).revision


# invalid Unicode -----------------------------------------------------------------------------

SURROGATE_BODIES = {
    "/v1/deployments/bad/predict": b'{"rows": [{"x0": 0.5, "x1": -0.2, "x2": 1.1, "x3": 0.0, "x4": 2.0, "customer_id": 7, "segment": "\\ud800"}]}',
    "/v1/features/push": b'{"view": "customer_profile", "rows": [' + PROFILE.replace('"basic"', '"\\ud800"').encode() + b"]}",
    "/v1/features/online": b'{"features": ["usage:calls"], "entities": [{"customer_id": "\\udc00x"}]}',
    "/v1/deployments/bad/canary": b'{"model": "churn:\\ud800"}',
    "/v1/deployments/fs/predict": b'{"entities": [{"\\ud83d": 1}]}',  # a lone surrogate in a key
}


@pytest.mark.parametrize("path", list(SURROGATE_BODIES))
def test_a_lone_surrogate_in_any_json_body_is_a_400(api: AsgiClient, serve_template: Template, path: str) -> None:
    response = api.post(path, content=SURROGATE_BODIES[path], headers=admin(serve_template))
    assert_error(response, 400, "bad_request", ("invalid Unicode",))


def test_a_valid_surrogate_pair_is_still_text(api: AsgiClient, serve_template: Template) -> None:
    body = b'{"rows": [{"x0": 0.5, "x1": -0.2, "x2": 1.1, "x3": 0.0, "x4": 2.0, "customer_id": 7, "segment": "\\ud83d\\ude00"}]}'
    response = api.post("/v1/deployments/bad/predict", content=body, headers=admin(serve_template))
    assert_error(response, 422, "invalid", ("\U0001f600",))  # decoded as text: refused only as an unseen level


# out-of-range integers and floats ------------------------------------------------------------------


@pytest.mark.parametrize("literal", [BELOW_INT64, ABOVE_INT64, "-1e30"])
@pytest.mark.parametrize(
    "path, template",
    [
        ("/v1/features/online", '{"features": ["usage:calls"], "entities": [{"customer_id": %s}]}'),
        ("/v1/deployments/fs/predict", '{"entities": [{"customer_id": %s}]}'),
        ("/v1/features/push", '{"view": "customer_profile", "rows": [' + PROFILE.replace('"customer_id": 7', '"customer_id": %s') + "]}"),
        ("/v1/features/push", '{"view": "customer_profile", "rows": [' + PROFILE.replace('"age": 30', '"age": %s') + "]}"),
    ],
)
def test_an_integer_beyond_int64_is_a_422_naming_the_field(
    api: AsgiClient, serve_template: Template, path: str, template: str, literal: str
) -> None:
    field = "age" if '"age": %s' in template else "customer_id"
    response = api.post(path, content=(template % literal).encode(), headers=admin(serve_template))
    assert_error(response, 422, "invalid", (field,))


def test_int64_min_itself_is_a_valid_key(api: AsgiClient, serve_template: Template) -> None:
    body = '{"features": ["usage:calls"], "entities": [{"customer_id": -9223372036854775808}]}'
    response = api.post("/v1/features/online", content=body.encode(), headers=admin(serve_template))
    assert response.status_code == 200, response.text
    assert response.json()["features"]["calls"] == [None]  # no such customer: not another one's row


@pytest.mark.parametrize("literal", ["3.5e38", "-1e39", "1e999", "123456789012345678901234567890123456789012"])
def test_a_number_beyond_float32_is_a_422_naming_the_field(api: AsgiClient, serve_template: Template, literal: str) -> None:
    fields = ", ".join(f'"{k}": {v!r}' if isinstance(v, str) else f'"{k}": {v}' for k, v in GOOD.items() if k != "x2")
    body = ('{"rows": [{' + fields.replace("'", '"') + f', "x2": {literal}' + "}]}").encode()
    assert_error(api.post("/v1/deployments/bad/predict", content=body, headers=admin(serve_template)), 422, "invalid", ("x2",))


# Content-Type, Host and Origin on every POST ----------------------------------------------------------

STATE_CHANGING = [
    ("/v1/deployments/bad/canary", '{"model": "churn:2", "weight": 50}'),
    ("/v1/deployments/bad/predict", '{"rows": [{"x0": 0.5, "x1": -0.2, "x2": 1.1, "x3": 0.0, "x4": 2.0, "customer_id": 7, "segment": "b"}]}'),
    ("/v1/features/push", '{"view": "customer_profile", "rows": [' + PROFILE + "]}"),
    ("/v1/features/online", '{"features": ["usage:calls"], "entities": [{"customer_id": 7}]}'),
]


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                   "application/json; charset=latin-1", "application/jsonx"])  # fmt: skip
@pytest.mark.parametrize("path, body", STATE_CHANGING)
def test_a_post_that_is_not_declared_json_is_a_415_auth_off(open_api: AsgiClient, edge_home: Path, path: str, body: str, ctype: str) -> None:
    before = revision(edge_home, "bad")
    response = open_api.post(path, content=body.encode(), headers={"Content-Type": ctype})
    assert_error(response, 415, "unsupported_media_type", ("Content-Type",))
    assert revision(edge_home, "bad") == before  # the cross-site form changed nothing


def test_json_bodies_and_empty_bodies_pass_the_edge(open_api: AsgiClient) -> None:
    ok = open_api.post("/v1/features/online", content=STATE_CHANGING[3][1].encode(), headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert ok.status_code == 200, ok.text
    empty = open_api.post("/v1/deployments/nope/promote")  # no body, no type: the route answers
    assert_error(empty, 404, "not_found", ("nope",))
    typeless = open_api.post("/v1/features/online", content=STATE_CHANGING[3][1].encode())  # a script's body: read as JSON
    assert typeless.status_code == 200, typeless.text
    blob = open_api.post("/v1/features/online", content=STATE_CHANGING[3][1].encode(), headers={"Origin": "https://evil.example"})
    assert_error(blob, 403, "forbidden")  # a browser's typeless Blob carries its Origin


def test_text_plain_is_refused_with_auth_on_too(api: AsgiClient, serve_template: Template) -> None:
    headers = {**admin(serve_template), "Content-Type": "text/plain"}
    path, body = STATE_CHANGING[0]
    assert_error(api.post(path, content=body.encode(), headers=headers), 415, "unsupported_media_type")


@pytest.mark.parametrize("path, body", STATE_CHANGING)
def test_a_cross_site_origin_is_refused_403(open_api: AsgiClient, edge_home: Path, path: str, body: str) -> None:
    before = revision(edge_home, "bad")
    response = open_api.post(path, content=body.encode(), headers={**JSON, "Origin": "https://evil.example"})
    assert_error(response, 403, "forbidden", ("evil.example",))
    fetch = open_api.post(path, content=body.encode(), headers={**JSON, "Sec-Fetch-Site": "cross-site"})
    assert_error(fetch, 403, "forbidden")
    assert revision(edge_home, "bad") == before


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "[2001:db8::1]:3000"])
def test_a_foreign_host_is_refused_403(open_api: AsgiClient, host: str) -> None:
    path, body = STATE_CHANGING[3]
    response = open_api.post(path, content=body.encode(), headers={**JSON, "Host": host})
    assert_error(response, 403, "forbidden", ("Host",))


@pytest.mark.parametrize("host", ["localhost:3000", "127.0.0.1", "[::1]:3000", "mlbox.test"])
def test_loopback_names_and_the_servers_own_address_are_allowed(open_api: AsgiClient, host: str) -> None:
    path, body = STATE_CHANGING[3]
    response = open_api.post(path, content=body.encode(), headers={**JSON, "Host": host, "Origin": f"http://{host}"})
    assert response.status_code == 200, response.text  # same origin


def test_allowed_hosts_and_origins_settings(edge_home: Path) -> None:
    path, body = STATE_CHANGING[3]
    with app_client(edge_home, MLBOX_SERVE_AUTH="false", MLBOX_SERVE_ALLOWED_HOSTS="box.lan, api.box.lan",
                    MLBOX_SERVE_ALLOWED_ORIGINS="https://app.example/") as client:  # fmt: skip
        allowed = client.post(path, content=body.encode(), headers={**JSON, "Host": "API.box.lan:8443", "Origin": "https://app.example"})
        assert allowed.status_code == 200, allowed.text
        assert_error(client.post(path, content=body.encode(), headers={**JSON, "Origin": "https://app.example.evil"}), 403, "forbidden")
        assert_error(client.post(path, content=body.encode(), headers={**JSON, "Host": "other.lan"}), 403, "forbidden")


def test_reads_are_not_touched_by_the_post_checks(open_api: AsgiClient) -> None:
    assert open_api.get("/v1/deployments", headers={"Origin": "https://evil.example"}).status_code == 200


def test_host_names_and_loopback_addresses() -> None:
    assert [host_name(h) for h in ["[::1]:3000", "Box.LAN:80", "::1", "example"]] == ["::1", "box.lan", "::1", "example"]
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.1.2.3", "box.lan"]))
    assert EdgePolicy().refusal({"headers": [], "server": None}) is None  # no Host (HTTP/1.0), no body


# bounded request heads on a real server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(edge_home: Path, serve_template: Template) -> Iterator[Server]:
    with running_server(edge_home, serve_template.tokens, MLBOX_SERVE_HEADER_TIMEOUT_S="1") as srv:
        yield srv


def _raw(port: int, data: bytes, wait: float = 3.0) -> tuple[bytes, float]:
    """Send `data`, read until the server closes (or `wait` passes): (what came back, seconds taken)."""
    started = time.monotonic()
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                out += chunk
    return out, time.monotonic() - started


def test_a_1mb_header_is_refused_at_once_and_the_server_keeps_answering(server: Server) -> None:
    port = server.port
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    out, took = _raw(port, head)
    assert took < 1.0, f"{took:.2f} s to refuse a 1 MB header"
    assert out == b"" or out.startswith(b"HTTP/1.1 431"), out[:200]  # 431, or reset while still sending
    started = time.monotonic()
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0


def test_a_head_under_the_limit_is_served(server: Server) -> None:
    port = server.port
    response = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Pad": "a" * 30000}, timeout=5)
    assert response.status_code == 200


def test_a_large_body_in_one_read_is_not_mistaken_for_a_large_head(server: Server, serve_template: Template) -> None:
    port = server.port
    rows = [dict(GOOD, x0=i / 1000) for i in range(900)]  # about 100 KB, more than the head limit
    response = httpx.post(f"http://127.0.0.1:{port}/v1/deployments/bad/predict", json={"rows": rows},
                          headers={"Authorization": f"Bearer {serve_template.tokens['service']}"}, timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["predictions"]) == 900


def test_a_stalled_head_gets_408_and_an_idle_connection_is_closed(server: Server) -> None:
    port = server.port
    out, took = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", wait=5)
    assert out.startswith(b"HTTP/1.1 408"), out[:200]
    assert b"request_timeout" in out and took < 3.0
    idle, took = _raw(port, b"", wait=5)
    assert idle == b"" and took < 3.0  # closed, not held for ever


def test_a_foreign_host_is_refused_by_the_real_server(server: Server) -> None:
    port = server.port
    body = STATE_CHANGING[3][1].encode()
    for host, status in [("evil.example", 403), (f"127.0.0.1:{port}", 401)]:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/features/online", content=body, headers={**JSON, "Host": host}, timeout=5)
        assert response.status_code == status, (host, response.text)


# the bind address and its warning ---------------------------------------------------------------------------


def _serve_banner(home: Path, *args: str) -> str:
    """The lines `mlbox serve` prints before BentoML takes over; the server is then stopped."""
    proc = subprocess.Popen([str(MLBOX_SCRIPT), "serve", "--port", str(free_port()), *args], env=subprocess_env(home),
                            cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return "".join(lines)


def test_serve_binds_loopback_by_default_without_a_warning(edge_home: Path) -> None:
    banner = _serve_banner(edge_home)
    assert "on http://127.0.0.1:" in banner, banner
    assert "warning" not in banner


def test_serve_warns_when_it_listens_beyond_loopback_without_tls(edge_home: Path) -> None:
    banner = _serve_banner(edge_home, "--host", "0.0.0.0")
    assert "warning: listening on 0.0.0.0" in banner and "without TLS" in banner, banner
