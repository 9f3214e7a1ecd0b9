"""The BentoML service behind `mlbox serve`: mlbox's Starlette app mounted into a class-based service.

Measured on 2 cores (see docs/serving.md), BentoML's per-request middleware — tracing,
metrics, access log and a TimeoutMiddleware whose timers pile up until gen-2 GC pauses
dominate p99 — costs more than the inference. So `/v1/*`, `/metrics`, `/openapi.json`,
`/healthz`, `/livez` and `/readyz` go straight to mlbox's app, which keeps its own metrics,
limits and error envelope; the lifespan (startup and shutdown hooks) goes through BentoML's app
unchanged. (Every HTTP path is mlbox's, so unknown paths get mlbox's JSON error and
BentoML's web UI, which loads a third-party script, is not served.) The fast path wraps one internal method, `Service.to_asgi`, so bentoml is
pinned to 1.4.40; if the patch ever stops applying, the app is still mounted at `/` and
every route keeps working, only slower (a test checks the patch applies).

The box comes from MLBOX_HOME, which `mlbox serve` sets; each worker opens it in
`__init__` (workers are separate processes; SQLite connections never cross a fork).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import bentoml
from _bentoml_sdk.service.factory import Service as _BentoService

from mlbox.api.app import build_app
from mlbox.api.predict import ContextRef
from mlbox.api.context import ServeContext
from mlbox.config import load_settings

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# uvicorn logs each request when "uvicorn.access" has a handler anywhere up the tree (BentoML
# gives the root one), formatting and URL-quoting the path first: about 4% of a request.
logging.getLogger("uvicorn.access").propagate = False

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

REF = ContextRef()
APP = build_app(REF)


class FastPathDispatcher:
    """Outermost ASGI app: mlbox's routes go straight to mlbox's app, the rest to BentoML's."""

    def __init__(self, bento_app: ASGIApp, fast_app: ASGIApp) -> None:
        self.bento_app = bento_app
        self.fast_app = fast_app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":  # every HTTP route is mlbox's; BentoML keeps the lifespan
            return await self.fast_app(scope, receive, send)
        return await self.bento_app(scope, receive, send)


_original_to_asgi = _BentoService.to_asgi


def _to_asgi(self: Any, is_main: bool = True) -> Any:
    app = _original_to_asgi(self, is_main=is_main)
    fast = getattr(self.inner, "__mlbox_fast_app__", None)
    return FastPathDispatcher(app, fast) if fast is not None else app


_BentoService.to_asgi = _to_asgi

_settings = load_settings(os.environ.get("MLBOX_HOME"))


@bentoml.service(
    name="mlbox",
    workers=int(_settings["serve.workers"]),
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
    tracing={"sample_rate": 0.0, "excluded_urls": ["/v1/"]},
    traffic={"timeout": 60},
)
@bentoml.asgi_app(APP, path="/")
class MlboxService:
    """Every deployment of one box, served by one BentoML service."""

    __mlbox_fast_app__ = APP

    def __init__(self) -> None:
        self.ctx = ServeContext(load_settings(os.environ.get("MLBOX_HOME")))

    @bentoml.on_startup  # type: ignore[untyped-decorator]
    def start(self) -> None:
        self.ctx.start()
        REF.ctx = self.ctx
        gc.collect()
        gc.freeze()  # the loaded models and sessions never become garbage: keep them out of GC passes
        gc.set_threshold(50_000, 20, 100)  # requests allocate many short-lived objects; collect young ones less often
        # Background threads (log flush, shadow batches, deployment poll) hold the GIL for at
        # most this long before the event loop gets it back: 1 ms instead of 5 ms cuts p99.
        sys.setswitchinterval(0.001)

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    def stop(self) -> None:
        REF.ctx = None
        self.ctx.close()
