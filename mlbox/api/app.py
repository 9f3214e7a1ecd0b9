"""The HTTP API as a plain Starlette app: inference, online features, deployment management, health.

Every error, from every route, is one JSON envelope: `{"error": {"status", "code", "message",
"hint"}}`. The BentoML service mounts this app; tests drive it in-process through httpx.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mlbox.api.context import ServeContext
from mlbox.api.openapi import openapi_document
from mlbox.errors import MlboxError, Overloaded, PayloadTooLarge, UsageError, ValidationError
from mlbox.serve.runtime import LoadedModel
from mlbox.serve.shadow import ShadowItem
from mlbox.serve.validation import encode_rows, parse_json, predict_request

log = logging.getLogger("mlbox.serve")
Handler = Callable[[Request], Awaitable[Response]]


def error_response(exc: MlboxError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"status": exc.status, "code": exc.code, "message": exc.message, "hint": exc.hint}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 from the declared or counted length before it is parsed."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise UsageError("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body of {int(declared)} bytes; at most {limit}", hint="serve.max_body_bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes", hint="serve.max_body_bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ContextRef:
    """Where the app finds its worker's ServeContext; a BentoML worker fills it in after it starts."""

    def __init__(self, ctx: ServeContext | None = None) -> None:
        self.ctx = ctx

    def get(self) -> ServeContext:
        if self.ctx is None:
            raise Overloaded("the server is starting", hint="retry in a second")
        return self.ctx


def build_app(source: ServeContext | ContextRef) -> Starlette:
    """The Starlette app over one worker's ServeContext (or a reference filled in later)."""
    ref = source if isinstance(source, ContextRef) else ContextRef(source)

    def guarded(fn: Handler, route: str, *, limited: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                ctx = ref.get()
            except MlboxError as exc:
                return error_response(exc, headers={"Retry-After": "1"})
            if limited and ctx.in_flight >= ctx.max_concurrency:
                ctx.metrics.inc("mlbox_requests_total", (("route", route), ("status", "429")))
                return error_response(
                    Overloaded("the server is at capacity", hint="retry after a second"), headers={"Retry-After": "1"}
                )
            ctx.in_flight += 1
            try:
                return await fn(request)
            except MlboxError as exc:
                ctx.metrics.inc("mlbox_requests_total", (("route", route), ("status", str(exc.status))))
                return error_response(exc)
            except Exception:
                log.exception("unhandled error on %s", request.url.path)
                ctx.metrics.inc("mlbox_requests_total", (("route", route), ("status", "500")))
                return error_response(MlboxError("internal error; see the server log"))
            finally:
                ctx.in_flight -= 1

        return endpoint

    async def predict(request: Request) -> Response:
        ctx = ref.get()
        started = time.perf_counter()
        name = request.path_params["name"]
        ctx.authenticate(request.headers.get("authorization"), "predict")
        live = ctx.runtime.get(name)
        body = parse_json(await read_body(request, ctx.max_body))
        kind, items = predict_request(body, ctx.max_rows)
        split = live.split
        key = None
        if split.sticky_key is not None:
            key = items[0].get(split.sticky_key)
        variant = split.route(key)
        model = live.canary if variant == "canary" and live.canary is not None else live.primary
        rows = items if kind == "rows" else entity_rows(ctx, model, items)
        X = encode_rows(model.signature, rows, kind, allow_null=kind == "entities")
        pred = model.predict(X)
        outputs = model.outputs(pred)
        request_id = request.headers.get("x-request-id") or next(ctx.request_ids)
        latency = (time.perf_counter() - started) * 1000
        labels = (("deployment", name), ("variant", variant))
        ctx.metrics.inc("mlbox_requests_total", (("route", "predict"), *labels, ("status", "200")))
        ctx.metrics.observe("mlbox_request_latency_seconds", labels, latency)
        entity = json.dumps(items[0], default=str) if kind == "entities" else (None if key is None else json.dumps({split.sticky_key: key}))
        inputs = json.dumps(rows, default=str, separators=(",", ":"))
        out_json = json.dumps(outputs, separators=(",", ":"))
        ctx.predlog.append({
            "ts": time.time(), "request_id": request_id, "deployment": name, "model": model.ref, "variant": variant,
            "shadow": False, "latency_ms": latency, "entity": entity, "inputs": inputs, "outputs": out_json, "error": None,
        })  # fmt: skip
        if live.shadow is not None:
            same = live.shadow_encodes_alike if model is live.primary else live.shadow.signature == model.signature
            ctx.shadow.offer(ShadowItem(name, live.shadow, X if same else None, pred, request_id, inputs, entity))
        meta = json.dumps({"model": model.ref, "variant": variant, "request_id": request_id}, separators=(",", ":"))
        return Response(f'{{"predictions":{out_json},{meta[1:]}', media_type="application/json")

    async def online_features(request: Request) -> Response:
        ctx = ref.get()
        ctx.authenticate(request.headers.get("authorization"), "features.read_online")
        body = parse_json(await read_body(request, ctx.max_body))
        if not isinstance(body, dict) or set(body) != {"features", "entities"}:
            raise UsageError('send {"features": ["view:field", ...], "entities": [{"key": value}, ...]}')
        features, entities = body["features"], body["entities"]
        if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
            raise ValidationError('"features" must be a non-empty list of "view:field" strings')
        if not isinstance(entities, list) or not entities or not all(isinstance(e, dict) for e in entities):
            raise ValidationError('"entities" must be a non-empty list of objects')
        if len(entities) > ctx.max_rows:
            raise PayloadTooLarge(f"{len(entities)} entities in one request; at most {ctx.max_rows}")
        values = ctx.box.features.get_online_features(features, entities, with_timestamps=True)
        ctx.metrics.inc("mlbox_requests_total", (("route", "features"), ("status", "200")))
        return _json({"features": values})

    async def list_deployments(request: Request) -> Response:
        ctx = ref.get()
        ctx.authenticate(request.headers.get("authorization"), "read")
        return _json({"deployments": [d.as_dict() for d in ctx.deployments.all()]})

    async def get_deployment(request: Request) -> Response:
        ctx = ref.get()
        ctx.authenticate(request.headers.get("authorization"), "read")
        d = ctx.deployments.get(request.path_params["name"])
        live = ctx.runtime.live.get(d.name)
        return _json({**d.as_dict(), "serving_revision": live.deployment.revision if live else None})

    async def manage(request: Request) -> Response:
        ctx = ref.get()
        who = ctx.authenticate(request.headers.get("authorization"), "deploy.manage")
        name, action = request.path_params["name"], request.path_params["action"]
        raw = await read_body(request, ctx.max_body)
        body = parse_json(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise UsageError("the body must be a JSON object")
        if action == "canary":
            _keys(body, {"model", "weight", "sticky_key"}, {"model"})
            weight = body.get("weight", 10)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValidationError('"weight" must be a number between 0 and 100')
            d = ctx.deployments.canary(name, str(body["model"]), float(weight), who.name, body.get("sticky_key"))
        elif action == "shadow":
            _keys(body, {"model"}, {"model"})
            d = ctx.deployments.shadow(name, None if body["model"] is None else str(body["model"]), who.name)
        elif action == "promote":
            _keys(body, set(), set())
            d = ctx.deployments.promote(name, who.name)
        else:
            _keys(body, set(), set())
            d = ctx.deployments.rollback(name, who.name)
        return _json(d.as_dict())

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ctx = ref.get()
        ready, detail = ctx.readiness()
        return _json({"status": "ready" if ready else "not ready", **detail}, 200 if ready else 503)

    async def metrics(request: Request) -> Response:
        ctx = ref.get()
        return PlainTextResponse(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def not_found(request: Request, exc: Exception) -> Response:
        from mlbox.errors import NotFound

        status = getattr(exc, "status_code", 404)
        if status == 405:
            return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        return error_response(NotFound(f"no route {request.url.path}", hint="see /openapi.json"))

    routes = [
        Route("/v1/deployments/{name}/predict", guarded(predict, "predict", limited=True), methods=["POST"]),
        Route("/v1/features/online", guarded(online_features, "features", limited=True), methods=["POST"]),
        Route("/v1/deployments", guarded(list_deployments, "deployments"), methods=["GET"]),
        Route("/v1/deployments/{name}", guarded(get_deployment, "deployments"), methods=["GET"]),
        Route(
            "/v1/deployments/{name}/{action:str}",
            guarded(_only(manage, {"canary", "shadow", "promote", "rollback"}), "manage"),
            methods=["POST"],
        ),
        Route("/healthz", healthz, methods=["GET"]),  # liveness answers while the worker is still starting
        Route("/livez", healthz, methods=["GET"]),
        Route("/readyz", guarded(readyz, "readyz"), methods=["GET"]),
        Route("/metrics", guarded(metrics, "metrics"), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


class MethodNotAllowed(MlboxError):
    status = 405
    code = "method_not_allowed"


def _only(handler: Handler, actions: set[str]) -> Handler:
    async def endpoint(request: Request) -> Response:
        from mlbox.errors import NotFound

        if request.path_params["action"] not in actions:
            raise NotFound(f"no route {request.url.path}", hint=f"actions are {', '.join(sorted(actions))}")
        return await handler(request)

    return endpoint


def _keys(body: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise ValidationError(f"unknown key {extra[0]!r}", hint=f"allowed: {', '.join(sorted(allowed)) or 'none'}")
    missing = sorted(required - set(body))
    if missing:
        raise ValidationError(f"missing key {missing[0]!r}")


def entity_rows(ctx: ServeContext, model: LoadedModel, entities: list[Any]) -> list[dict[str, Any]]:
    """Model input rows from the online store, one per entity."""
    refs = {c.name: model.feature_refs.get(c.name) for c in model.signature.columns}
    missing = [c for c, r in refs.items() if r is None]
    if missing:
        raise ValidationError(
            f"{model.ref} was not trained from the feature store, so it cannot look up {missing[0]!r}",
            hint='send "rows" with every feature instead',
        )
    by_view: dict[str, list[tuple[str, str]]] = {}
    for column, ref in refs.items():
        assert ref is not None
        by_view.setdefault(ref.split(":")[0], []).append((column, ref))
    rows: list[dict[str, Any]] = [{} for _ in entities]
    for pairs in by_view.values():
        values = ctx.box.features.get_online_features([r for _, r in pairs], entities)
        for column, ref in pairs:
            field = ref.split(":")[1]
            for row, value in zip(rows, values[field], strict=True):
                row[column] = value
    return rows
