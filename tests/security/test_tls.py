"""TLS: `mlbox auth selfsigned` certificates, the checks `mlbox serve` makes before it starts, and a real HTTPS server.

The server tests start one real `mlbox serve --ssl-certfile … --ssl-keyfile …` on a free loopback
port (through `mlbox.serve.process.start`, whose readiness wait then speaks HTTPS) over a small
box with one trained model, and talk to it with httpx and the stdlib ssl module as real clients.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from threadpoolctl import threadpool_limits

from mlbox.config import load_settings
from mlbox.errors import Conflict, MlboxError, NotFound, UsageError, ValidationError
from mlbox.security.certs import check_pair, default_hosts, generate_selfsigned
from mlbox.serve import process
from mlbox.train.runner import train

from ..conftest import MLBOX_SCRIPT, OS_USER
from ..serve.conftest import _plain_spec, open_box, plain_frame, sample_rows, subprocess_env

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def trusting(cert: Path) -> ssl.SSLContext:
    """What a client given the certificate file trusts: that certificate alone, host names checked."""
    return ssl.create_default_context(cafile=str(cert))


# certificates ------------------------------------------------------------------------------


def test_selfsigned_writes_a_private_key_and_a_certificate_for_the_default_names(tmp_path: Path) -> None:
    from cryptography import x509

    info = generate_selfsigned(tmp_path / "tls", default_hosts(), 30, NOW)
    assert info.cert == tmp_path / "tls" / "cert.pem" and info.key == tmp_path / "tls" / "key.pem"
    assert os.stat(info.key).st_mode & 0o777 == 0o600
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname()} <= set(info.hosts)
    assert info.not_after - info.not_before == timedelta(days=30)
    assert info.not_before <= NOW and not info.expired(NOW) and info.expired(NOW + timedelta(days=31))
    cert = x509.load_pem_x509_certificate(info.cert.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca  # its own trust anchor
    # the stdlib accepts it as a trust root: what every client given the file does
    ssl.create_default_context(cafile=str(info.cert))


def test_selfsigned_refuses_bad_input_and_existing_files(tmp_path: Path) -> None:
    for host in ("bad name", "a..b", "-x.example", "x" * 254, "../etc"):
        with pytest.raises(ValidationError, match="neither an IP address nor a DNS name"):
            generate_selfsigned(tmp_path / "a", [host], 30, NOW)
    assert not (tmp_path / "a").exists()  # nothing written for a refused request
    for days in (0, 826):
        with pytest.raises(ValidationError, match="--days"):
            generate_selfsigned(tmp_path / "a", ["localhost"], days, NOW)
    first = generate_selfsigned(tmp_path / "b", ["box.example.com", "10.0.0.5"], 30, NOW)
    assert first.hosts == ("box.example.com", "10.0.0.5")
    with pytest.raises(Conflict, match="already exists"):
        generate_selfsigned(tmp_path / "b", ["localhost"], 30, NOW)
    second = generate_selfsigned(tmp_path / "b", ["localhost"], 30, NOW, force=True)
    assert second.sha256 != first.sha256 and os.stat(second.key).st_mode & 0o777 == 0o600


def test_check_pair_refuses_each_fault_with_one_clear_error(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    a = generate_selfsigned(tmp_path / "a", ["localhost"], 30, NOW)
    b = generate_selfsigned(tmp_path / "b", ["localhost"], 30, NOW)
    assert check_pair(a.cert, a.key).sha256 == a.sha256
    with pytest.raises(NotFound, match="does not exist"):
        check_pair(tmp_path / "missing.pem", a.key)
    with pytest.raises(NotFound, match="does not exist"):
        check_pair(a.cert, tmp_path / "missing.pem")
    with pytest.raises(ValidationError, match="does not belong to certificate"):
        check_pair(a.cert, b.key)
    with pytest.raises(ValidationError, match="not a PEM certificate"):
        check_pair(a.key, a.key)
    (tmp_path / "junk.pem").write_text("junk")
    os.chmod(tmp_path / "junk.pem", 0o600)
    with pytest.raises(ValidationError, match="not a PEM private key"):
        check_pair(a.cert, tmp_path / "junk.pem")
    for mode in (0o640, 0o604, 0o644):
        os.chmod(a.key, mode)
        with pytest.raises(UsageError, match="can be read by its group or others") as err:
            check_pair(a.cert, a.key)
        assert err.value.hint == f"chmod 600 {a.key}"
    os.chmod(a.key, 0o600)
    key = serialization.load_pem_private_key(a.key.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    locked.write_bytes(pem)
    os.chmod(locked, 0o600)
    with pytest.raises(UsageError, match="passphrase"):
        check_pair(a.cert, locked)


# `mlbox serve` refuses before it starts ----------------------------------------------------


@pytest.mark.usefixtures("box")
def test_serve_refuses_a_bad_pair_before_starting(home: Path, tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    a = generate_selfsigned(tmp_path / "a", ["localhost"], 30, NOW)
    b = generate_selfsigned(tmp_path / "b", ["localhost"], 30, NOW)
    env = {"MLBOX_HOME": str(home)}
    cases = [
        (["--ssl-certfile", str(a.cert), "--ssl-keyfile", str(b.key)], {}, "does not belong to certificate"),
        (["--ssl-certfile", str(tmp_path / "nope.pem"), "--ssl-keyfile", str(a.key)], {}, "does not exist"),
        (["--ssl-certfile", str(a.cert)], {}, "needs both a certificate and its key"),
        (["--ssl-keyfile", str(a.key)], {}, "needs both a certificate and its key"),
        # settings, relative to the box folder, are read when no option is given
        ([], {"MLBOX_SERVE_SSL_CERTFILE": "tls/cert.pem", "MLBOX_SERVE_SSL_KEYFILE": "tls/key.pem"}, f"{home}/tls/cert.pem does not exist"),
        (["--ssl-keyfile", str(b.key)], {"MLBOX_SERVE_SSL_CERTFILE": str(a.cert)}, "does not belong to certificate"),
    ]
    for args, extra, message in cases:
        result = cli_run("serve", "--port", "1", *args, env={**env, **extra})
        assert result.exit_code != 0, (args, result.stdout)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one red line, no traceback
        assert "serving" not in result.stdout  # refused before BentoML was started
    os.chmod(a.key, 0o644)
    result = cli_run("serve", "--ssl-certfile", str(a.cert), "--ssl-keyfile", str(a.key), env=env)
    assert result.exit_code == 2 and "can be read by its group or others (mode 0644)" in result.stderr


@pytest.mark.usefixtures("box")
def test_auth_selfsigned_command_writes_into_the_box_and_prints_the_serve_line(home: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("auth", "selfsigned", "--host", "localhost", "--host", "127.0.0.1", "--days", "7", env={"MLBOX_HOME": str(home)})
    assert result.exit_code == 0, result.stderr
    cert, key = home / "tls" / "cert.pem", home / "tls" / "key.pem"
    assert f"mlbox serve --ssl-certfile {cert} --ssl-keyfile {key}" in result.stdout
    info = check_pair(cert, key)
    assert info.hosts == ("localhost", "127.0.0.1") and info.not_after - info.not_before == timedelta(days=7)
    again = cli_run("auth", "selfsigned", env={"MLBOX_HOME": str(home)})
    assert again.exit_code != 0 and "already exists" in again.stderr and check_pair(cert, key).sha256 == info.sha256
    # the printed settings route works as well: relative to the box folder
    settings = load_settings(home, environ={"MLBOX_SERVE_SSL_CERTFILE": "tls/cert.pem", "MLBOX_SERVE_SSL_KEYFILE": "tls/key.pem"})
    from mlbox.cli.serve import tls_pair

    pair = tls_pair(settings, None, None)
    assert pair is not None and pair.cert == cert and pair.key == key
    assert tls_pair(load_settings(home, environ={}), None, None) is None  # no TLS unless asked


def test_serve_warns_about_a_certificate_outside_its_validity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlbox.cli.serve import tls_pair

    old = generate_selfsigned(tmp_path / "old", ["localhost"], 1, datetime(2020, 1, 1, tzinfo=UTC))
    settings = load_settings(tmp_path / "box", environ={})
    assert tls_pair(settings, old.cert, old.key) == old
    assert "clients will refuse it" in capsys.readouterr().out


# a real HTTPS server -----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsServer:
    """A running `mlbox serve` over HTTPS with the certificate clients must be given."""

    port: int
    cert: Path
    other_cert: Path  # a valid self-signed certificate for the same names, but not the server's
    token: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    root = tmp_path_factory.mktemp("tls")
    home = root / "box"
    home.mkdir()
    plain_frame(400).to_parquet(home / "plain.parquet")
    with open_box(home) as box, threadpool_limits(limits=1):
        spec = _plain_spec(home, "plain.parquet", "churn")
        train(spec, store=None, tracking=box.tracking, registry=box.registry, actor=OS_USER, register=True)
        box.deployments.create("churn", "churn:1", OS_USER)
        box.identity.add_user(OS_USER, "svc", "service")
        token = box.identity.create_token(OS_USER, "svc", never_expires=True)[1]
    made = subprocess.run(
        [str(MLBOX_SCRIPT), "auth", "selfsigned", "--out", str(root / "tls")],
        env=subprocess_env(home), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    cert, key = root / "tls" / "cert.pem", root / "tls" / "key.pem"
    assert f"mlbox serve --ssl-certfile {cert} --ssl-keyfile {key}" in made.stdout
    other = generate_selfsigned(root / "other", default_hosts(), 30, datetime.now(UTC))
    port = process.free_port()
    cmd = [str(MLBOX_SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    proc = process.start(cmd, subprocess_env(home), port, root / "serve.log", timeout=120, cafile=cert)
    try:
        yield TlsServer(port=port, cert=cert, other_cert=other.cert, token=token)
    finally:
        process.stop(proc)


def test_https_serves_health_and_predictions_to_a_client_that_trusts_the_certificate(tls_server: TlsServer) -> None:
    with httpx.Client(base_url=tls_server.url, verify=trusting(tls_server.cert), timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        rows = sample_rows(3)
        r = client.post("/v1/deployments/churn/predict", json={"rows": rows}, headers={"Authorization": f"Bearer {tls_server.token}"})
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 3
        # the token still matters over TLS
        assert client.post("/v1/deployments/churn/predict", json={"rows": rows}).status_code == 401
    # `localhost` is covered by the certificate as well as 127.0.0.1
    with httpx.Client(verify=trusting(tls_server.cert), timeout=30) as client:
        assert client.get(f"https://localhost:{tls_server.port}/healthz").status_code == 200
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw:
        with trusting(tls_server.cert).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_plain_http_to_the_https_port_gets_no_answer(tls_server: TlsServer) -> None:
    with httpx.Client(timeout=10) as client, pytest.raises(httpx.TransportError):
        client.get(f"http://127.0.0.1:{tls_server.port}/healthz")


def test_a_client_that_does_not_trust_the_certificate_refuses_it(tls_server: TlsServer) -> None:
    for verify in (True, trusting(tls_server.other_cert)):  # the system store, and a look-alike self-signed certificate
        with httpx.Client(verify=verify, timeout=10) as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(f"{tls_server.url}/healthz")


def test_readiness_wait_stops_at_once_on_an_untrusted_certificate(tls_server: TlsServer, tmp_path: Path) -> None:
    """`process.start` probes the running HTTPS server while its own command idles: a wrong trust anchor
    is an error at the first probe, not a timeout, and the started process is stopped."""
    started = datetime.now(UTC)
    idle = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(MlboxError, match="not trusted through"):
        process.start(idle, dict(os.environ), tls_server.port, timeout=60, cafile=tls_server.other_cert)
    assert datetime.now(UTC) - started < timedelta(seconds=20)
    ready = process.start(idle, dict(os.environ), tls_server.port, timeout=60, cafile=tls_server.cert)
    process.stop(ready, timeout=5)
