"""Alerts: the log line, and the webhook POST against real HTTP servers on 127.0.0.1, with its address checks."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlbox._version import __version__
from mlbox.errors import UsageError
from mlbox.monitor import alerts
from mlbox.monitor.alerts import alert, check_webhook_url, post_webhook
from mlbox.monitor.policy import AlertConfig


class Receiver:
    """A real HTTP server in a thread that records every request and answers with `status` (and `location`)."""

    def __init__(self, status: int = 200, location: str | None = None, delay_s: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                time.sleep(delay_s)
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST  # noqa: N815 -- a followed redirect would arrive as a GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # type: ignore[method-assign]  # a client that gave up is expected
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_post_delivers_json_with_headers(receiver: Receiver) -> None:
    payload = {"event": "drift", "score": 0.25, "nan": float("nan"), "nested": {"list": [1, 2]}}
    result = post_webhook(f"{receiver.url}/hooks/mlbox?team=ml", payload, allow_private=True)
    assert result.ok and result.status == 200 and result.error is None and result.address == "127.0.0.1"
    (req,) = receiver.requests
    assert req["path"] == "/hooks/mlbox?team=ml"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["User-Agent"] == f"mlbox/{__version__}"
    assert req["headers"]["Host"] == f"127.0.0.1:{receiver.port}"
    # strict JSON: the NaN statistic is sent as null
    assert json.loads(req["body"]) == {"event": "drift", "score": 0.25, "nan": None, "nested": {"list": [1, 2]}}


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:{port}/x", "loopback"),
        ("http://[::1]:{port}/x", "loopback"),
        ("http://10.1.2.3/x", "private"),
        ("http://192.168.0.10/x", "private"),
        ("http://172.16.5.4/x", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://0.0.0.0:{port}/x", "unspecified"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://240.0.0.1/x", "reserved"),
        ("http://100.64.0.1/x", "non-global"),  # carrier-grade NAT space
        ("http://[::ffff:127.0.0.1]:{port}/x", "loopback"),  # IPv4-mapped IPv6
        ("http://[::ffff:169.254.169.254]/x", "link-local"),
        ("http://[2002:7f00:1::]/x", "loopback"),  # 6to4 of 127.0.0.1
        ("http://[64:ff9b::a9fe:a9fe]/x", "link-local"),  # NAT64 of 169.254.169.254
        ("http://localhost:{port}/x", "loopback"),
        ("http://2130706433:{port}/x", "loopback"),  # 127.0.0.1 written as one number; the resolver reads it
    ],
)
def test_private_targets_are_refused_without_allow_private(receiver: Receiver, url: str, why: str) -> None:
    url = url.format(port=receiver.port)
    with pytest.raises(UsageError) as info:
        check_webhook_url(url, allow_private=False)
    assert why in info.value.message and "allow_private" in (info.value.hint or "")
    result = post_webhook(url, {"x": 1}, allow_private=False)
    assert not result.ok and result.status is None and why in (result.error or "")
    assert receiver.requests == []


def test_a_hostname_resolving_to_loopback_is_refused(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"hooks.internal.test": ["93.184.216.34", "127.0.0.1"], "evil.test": ["127.0.0.1"]}
    real = socket.getaddrinfo

    def resolver(host: str, port: Any, *args: Any, **kw: Any) -> Any:
        if host in answers:  # DNS is the boundary; these names answer what an attacker's zone would
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with pytest.raises(UsageError, match="resolves to loopback address 127.0.0.1"):
        check_webhook_url(f"http://evil.test:{receiver.port}/", allow_private=False)
    # one private answer among public ones is enough
    with pytest.raises(UsageError, match="resolves to loopback address 127.0.0.1"):
        check_webhook_url(f"http://hooks.internal.test:{receiver.port}/", allow_private=False)
    assert not post_webhook(f"http://evil.test:{receiver.port}/", {}, allow_private=False).ok
    assert receiver.requests == []


def test_the_post_goes_to_the_address_that_was_checked(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is resolved once; the connection goes to that address, with the name in the Host header."""
    calls: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: str, port: Any, *args: Any, **kw: Any) -> Any:
        if host == "hook.test":
            calls.append(host)
            if len(calls) > 1:  # a second lookup would get another answer: it must never happen
                raise AssertionError("the webhook host was resolved twice")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    result = post_webhook(f"http://hook.test:{receiver.port}/in", {"a": 1}, allow_private=True)
    assert result.ok, result.error
    assert calls == ["hook.test"]
    assert receiver.requests[0]["headers"]["Host"] == f"hook.test:{receiver.port}"


def test_redirects_are_not_followed() -> None:
    with Receiver() as target, Receiver(status=302, location="") as hop:
        hop_url = hop.url
        target_url = f"{target.url}/stolen"
        hop.server.RequestHandlerClass = _redirecting(target_url)
        result = post_webhook(f"{hop_url}/hook", {"a": 1}, allow_private=True)
        assert not result.ok and result.status == 302
        assert "redirects are not followed" in (result.error or "") and target_url in (result.error or "")
        assert target.requests == []


def _redirecting(location: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_error_answers_are_failures(status: int) -> None:
    with Receiver(status=status) as r:
        result = post_webhook(r.url, {}, allow_private=True)
    assert not result.ok and result.status == status and f"answered {status}: ok" in (result.error or "")


def test_a_dead_port_is_a_failed_result_not_an_exception() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = post_webhook(f"http://127.0.0.1:{port}/", {"a": 1}, allow_private=True, timeout_s=2)
    assert not result.ok and result.status is None and "failed" in (result.error or "")


def test_a_silent_receiver_times_out() -> None:
    with Receiver(delay_s=2.0) as r:
        started = time.perf_counter()
        result = post_webhook(r.url, {"a": 1}, allow_private=True, timeout_s=0.3)
        elapsed = time.perf_counter() - started
    assert not result.ok and "timed out" in (result.error or "") and elapsed < 1.5


def test_an_unresolvable_host_is_a_failed_result() -> None:
    result = post_webhook("http://no-such-host.invalid/x", {}, allow_private=False)
    assert not result.ok and "does not resolve" in (result.error or "")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com/", "javascript:alert(1)", "example.com/hook", "", "http:///x"]
)
def test_non_http_urls_are_refused(url: str) -> None:
    with pytest.raises(UsageError):
        check_webhook_url(url, allow_private=True)
    assert not post_webhook(url, {}, allow_private=True).ok


def test_user_info_and_bad_ports_are_refused() -> None:
    with pytest.raises(UsageError, match="user info"):
        check_webhook_url("http://example.com@127.0.0.1/", allow_private=True)
    with pytest.raises(UsageError, match="invalid port"):
        check_webhook_url("http://example.com:99999/", allow_private=True)


def test_forbidden_allows_public_addresses() -> None:
    import ipaddress

    for text in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert alerts.forbidden(ipaddress.ip_address(text)) is None, text


def test_alert_logs_one_warning_and_posts(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    config = AlertConfig(webhook=f"{receiver.url}/hook", allow_private=True)
    details = {"reason": "the primary churn:1 drifted on age", "share": 0.5}
    with caplog.at_level(logging.WARNING, logger="mlbox.monitor"):
        result = alert("drift", "churn_api", details, config, logging.getLogger("mlbox.monitor"))
    assert result is not None and result.ok
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("mlbox.monitor", logging.WARNING, "monitor drift on churn_api: the primary churn:1 drifted on age")
    ]
    body = json.loads(receiver.requests[0]["body"])
    assert body["event"] == "drift" and body["deployment"] == "churn_api" and body["details"] == details
    assert body["source"] == "mlbox" and body["version"] == __version__ and body["at"].endswith("Z")


def test_alert_without_a_webhook_only_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mlbox.monitor"):
        assert alert("rollback", "churn_api", {"breaches": [{"metric": "p99_ms"}]}, None, logging.getLogger("mlbox.monitor")) is None
        assert alert("promote", "churn_api", {"reason": "better"}, AlertConfig(webhook_env="HOOK"), logging.getLogger("mlbox.monitor"),
                     environ={}) is None  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        'monitor rollback on churn_api: {"breaches": [{"metric": "p99_ms"}]}',
        "monitor promote on churn_api: better",
    ]


def test_alert_reads_an_env_reference_and_logs_a_failed_delivery(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    config = AlertConfig(webhook_env="CHURN_WEBHOOK_URL", allow_private=False)
    with caplog.at_level(logging.WARNING, logger="mlbox.monitor"):
        result = alert("drift", "churn_api", {"reason": "drifted"}, config, logging.getLogger("mlbox.monitor"),
                       environ={"CHURN_WEBHOOK_URL": f"{receiver.url}/hook"})  # fmt: skip
    assert result is not None and not result.ok and "loopback" in (result.error or "")
    assert receiver.requests == []
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "monitor drift on churn_api: drifted" and "webhook not delivered" in messages[1]
    allowed = AlertConfig(webhook_env="CHURN_WEBHOOK_URL", allow_private=True)
    assert alert("drift", "churn_api", {}, allowed, environ={"CHURN_WEBHOOK_URL": receiver.url}).ok  # type: ignore[union-attr]
    assert len(receiver.requests) == 1


def test_https_checks_the_certificate_against_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS to the pinned address: SNI and the certificate check use the URL's name; a wrong name fails."""
    import ssl

    # CPython's own test certificates: keycert3.pem is for `localhost`, signed by pycacert.pem (valid to 2037)
    certs = Path(ssl.__file__).parent / "test" / "certdata"
    if not (certs / "keycert3.pem").is_file():
        pytest.skip("this Python has no test certificates (the stdlib `test` package)")
    real = socket.getaddrinfo

    def resolver(host: str, port: Any, *args: Any, **kw: Any) -> Any:
        if host in ("localhost", "other.test"):  # both to the IPv4 loopback the server listens on
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with Receiver() as r:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(certs / "keycert3.pem")
        r.server.socket = server_ctx.wrap_socket(r.server.socket, server_side=True)
        client_ctx = ssl.create_default_context(cafile=str(certs / "pycacert.pem"))
        ok = post_webhook(f"https://localhost:{r.port}/tls", {"a": 1}, allow_private=True, context=client_ctx)
        assert ok.ok, ok.error
        assert r.requests[0]["path"] == "/tls" and r.requests[0]["headers"]["Host"] == f"localhost:{r.port}"
        wrong = post_webhook(f"https://other.test:{r.port}/tls", {"a": 1}, allow_private=True, context=client_ctx, timeout_s=2)
        assert not wrong.ok and "certificate" in (wrong.error or "").lower(), wrong.error
        untrusted = post_webhook(f"https://localhost:{r.port}/tls", {"a": 1}, allow_private=True, timeout_s=2)  # system CAs
        assert not untrusted.ok and "certificate" in (untrusted.error or "").lower(), untrusted.error
        assert len(r.requests) == 1
