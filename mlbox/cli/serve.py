"""`mlbox serve`: run the BentoML service hosting every deployment of the box."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from mlbox.api.edge import is_loopback
from mlbox.cli._common import actor, console, open_box
from mlbox.clock import now
from mlbox.config import Settings, child_env
from mlbox.errors import UsageError
from mlbox.security.certs import CertInfo, check_pair


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: serve.port, 3000).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Worker processes (default: serve.workers).")] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="PEM certificate (chain) to serve HTTPS with (default: serve.ssl_certfile).")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option("--ssl-keyfile", help="PEM private key of the certificate, mode 0600 (default: serve.ssl_keyfile).")
    ] = None,
) -> None:
    """Serve predictions, online features and deployment management over HTTP (BentoML)."""
    with open_box() as box:
        actor(box, "deploy.manage")
        settings, home = box.settings, box.paths.home
        deployments = [d.name for d in box.deployments.all()]
    # BentoML gives the workers PROMETHEUS_MULTIPROC_DIR=$BENTOML_HOME/prometheus_multiproc_dir, wiped
    # at each start: prometheus_client keeps each worker's metrics there and /metrics sums them
    env = child_env(
        MLBOX_HOME=str(home),
        BENTOML_HOME=str(home / "bentoml"),
        BENTOML_DO_NOT_TRACK="True",
        MLBOX_SERVE_WORKERS=str(workers or settings["serve.workers"]),
    )
    bind_host, bind_port = host or settings["serve.host"], port or settings["serve.port"]
    tls = tls_pair(settings, ssl_certfile, ssl_keyfile)  # checked here: one clear error before BentoML starts
    if not tls and not is_loopback(str(bind_host)):
        console.print(
            f"[yellow]warning:[/yellow] listening on {bind_host}, beyond this machine, without TLS: tokens and data "
            "cross the network in clear text (pass --ssl-certfile/--ssl-keyfile, or --host 127.0.0.1)"
        )
    console.print(
        f"serving {len(deployments)} deployment(s) ({', '.join(deployments) or 'none yet'}) from {home} "
        f"on {'https' if tls else 'http'}://{bind_host}:{bind_port} with {env['MLBOX_SERVE_WORKERS']} worker(s)"
    )
    sys.stdout.flush()
    args = [sys.executable, "-m", "bentoml", "serve", "mlbox.api.service:MlboxService",
            "--host", str(bind_host), "--port", str(bind_port)]  # fmt: skip
    if tls:
        args += ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
    os.execve(sys.executable, args, env)  # bentoml owns the process from here: signals reach it directly


def tls_pair(settings: Settings, certfile: Path | None, keyfile: Path | None) -> CertInfo | None:
    """The checked certificate/key pair to serve with (options over settings), or None for plain HTTP.

    Relative paths in settings are read from the box folder, on the command line from the current one.
    """
    home = settings.home
    cert = certfile.absolute() if certfile else (home / settings["serve.ssl_certfile"] if settings["serve.ssl_certfile"] else None)
    key = keyfile.absolute() if keyfile else (home / settings["serve.ssl_keyfile"] if settings["serve.ssl_keyfile"] else None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError("TLS needs both a certificate and its key", hint="pass --ssl-certfile and --ssl-keyfile (or set both settings)")
    info = check_pair(cert, key)
    if info.expired(now()):
        console.print(f"[yellow]warning:[/yellow] certificate {cert} is valid only {info.not_before} to {info.not_after}; clients will refuse it")
    return info


def register(app: typer.Typer) -> None:
    app.command()(serve)
