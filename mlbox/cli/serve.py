"""`mlbox serve`: run the BentoML service hosting every deployment of the box."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from mlbox.cli._common import actor, console, open_box
from mlbox.config import child_env


def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default: serve.port, 3000).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Worker processes (default: serve.workers).")] = None,
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
    console.print(
        f"serving {len(deployments)} deployment(s) ({', '.join(deployments) or 'none yet'}) from {home} "
        f"on http://{bind_host}:{bind_port} with {env['MLBOX_SERVE_WORKERS']} worker(s)"
    )
    sys.stdout.flush()
    args = [sys.executable, "-m", "bentoml", "serve", "mlbox.api.service:MlboxService",
            "--host", str(bind_host), "--port", str(bind_port)]  # fmt: skip
    os.execve(sys.executable, args, env)  # bentoml owns the process from here: signals reach it directly


def register(app: typer.Typer) -> None:
    app.command()(serve)
