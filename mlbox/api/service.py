"""The BentoML service behind `mlbox serve` and every packaged Bento: mlbox's app as a class-based service.

Measured on 2 cores (see docs/serving.md), BentoML's per-request middleware — tracing,
metrics, access log and a TimeoutMiddleware whose timers pile up until gen-2 GC pauses
dominate p99 — costs more than the inference. So every HTTP request goes straight to
mlbox's one dispatcher (`api.app.Api`), which keeps its own metrics, limits and error
envelope; the lifespan (startup and shutdown hooks) goes through BentoML's app unchanged.
(Unknown paths get mlbox's JSON error; BentoML's web UI, which loads a third-party script,
is not served.) This wraps one internal method, `Service.to_asgi`, so bentoml is pinned to
1.4.40; if the patch ever stops applying, the app is still mounted at `/` and every route
keeps working, only slower (a test checks the patch applies). BentoML's own client finds
the predict endpoints in mlbox's `/schema.json` (api/openapi.py), not in `@bentoml.api`
methods: those would run through the middleware above. A second patch, on uvicorn.Config,
bounds request heads in size and time (api/edge.py): BentoML passes no such option.

The box is the one bundled in a Bento (`src/box`, next to this package), else MLBOX_HOME,
which `mlbox serve` sets; each worker opens it in `__init__` (workers are separate
processes; SQLite connections never cross a fork).
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Any

import bentoml
import uvicorn
from _bentoml_sdk.service.factory import Service as _BentoService

from mlbox.api.app import build_app
from mlbox.api.context import ServeContext
from mlbox.api.edge import uvicorn_options
from mlbox.api.predict import ContextRef
from mlbox.config import load_settings, serve_home

# uvicorn logs each request when "uvicorn.access" has a handler anywhere up the tree (BentoML
# gives the root one), formatting and URL-quoting the path first: about 4% of a request.
logging.getLogger("uvicorn.access").propagate = False

BUNDLED_BOX = Path(__file__).resolve().parents[2] / "box"  # where `mlbox package` puts the box in a Bento
REF = ContextRef()
APP = build_app(REF)

_original_to_asgi = _BentoService.to_asgi


def _to_asgi(self: Any, is_main: bool = True) -> Any:
    app = _original_to_asgi(self, is_main=is_main)
    fast = getattr(self.inner, "__mlbox_fast_app__", None)
    return fast.around(app) if fast is not None else app


_BentoService.to_asgi = _to_asgi

_settings = load_settings(serve_home(BUNDLED_BOX))

# BentoML's worker builds uvicorn.Config itself and exposes neither the protocol nor a head limit:
# mlbox's options (api/edge.py) go in here, after BentoML's, so they win.
_original_config_init = uvicorn.Config.__init__
_EDGE_OPTIONS = uvicorn_options(_settings)


def _config_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _original_config_init(self, *args, **{**kwargs, **_EDGE_OPTIONS})


uvicorn.Config.__init__ = _config_init  # type: ignore[method-assign]


@bentoml.service(
    name="mlbox",
    workers=int(_settings["serve.workers"]),
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
    tracing={"sample_rate": 0.0, "excluded_urls": ["/v1/"]},
    traffic={"timeout": 60},
    envs=[{"name": "BENTOML_DO_NOT_TRACK", "value": "True"}],  # every worker BentoML starts, in a Bento too
)
@bentoml.asgi_app(APP, path="/")
class MlboxService:
    """Every deployment of one box, served by one BentoML service."""

    __mlbox_fast_app__ = APP

    def __init__(self) -> None:
        self.ctx = ServeContext(load_settings(serve_home(BUNDLED_BOX)))

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
