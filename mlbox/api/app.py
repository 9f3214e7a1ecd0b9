"""The HTTP API: inference, online features (read and push), deployment management, health, the documents.

One dispatcher (`Api`) fronts every route: the predict route is a raw ASGI endpoint
(api/predict.py) reached without the router, every other route is a plain Starlette route.
Every POST first passes the edge's Host/Origin/Content-Type checks (api/edge.py).
Every error, from every route, is one JSON envelope: `{"error": {"status", "code",
"message", "hint"}}`. The BentoML service serves this app; tests drive it in-process
through httpx.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mlbox.api.asgi import ClientGone, Receive, Scope, Send, error_body, read_body, send_bytes
from mlbox.api.context import ServeContext, bearer_token
from mlbox.api.edge import EdgePolicy
from mlbox.api.jsonrows import check_rows
from mlbox.api.manage import check_keys, console_routes
from mlbox.api.openapi import ApiFacts, api_facts, openapi_document
from mlbox.api.openapi import bentoml_schema as bentoml_service_schema
from mlbox.api.predict import ContextRef, PredictEndpoint, predict_name
from mlbox.errors import MlboxError, PayloadTooLarge, UsageError, ValidationError
from mlbox.security.scopes import Scopes
from mlbox.serve.validation import parse_json

Handler = Callable[[Request], Awaitable[Response]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_response(exc: MlboxError, headers: dict[str, str] | None = None) -> Response:
    merged = {**exc.headers, **(headers or {})}  # e.g. WWW-Authenticate on a 401
    return Response(error_body(exc), status_code=exc.status, headers=merged, media_type="application/json")


def _json(data: Any, status: int = 200) -> Response:
    body = orjson.dumps(data, default=str, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, media_type="application/json")


async def _body(request: Request, limit: int) -> bytes:
    try:
        return await read_body(request.headers.get("content-length"), request.receive, limit)
    except ClientGone:
        raise UsageError("the client disconnected before the body was complete") from None


class Api:
    """The one dispatcher in front of every route: predict POSTs straight to their endpoint (the measured hot
    path), every other HTTP request to the Starlette router, and anything else (the lifespan) to `lifespan`,
    which is BentoML's app under `mlbox serve` so its startup and shutdown hooks run."""

    def __init__(self, predict: PredictEndpoint, starlette: Starlette, lifespan: ASGIApp | None = None) -> None:
        self.predict = predict
        self.starlette = starlette
        self.lifespan: ASGIApp = lifespan or starlette
        self.routes = starlette.routes
        self._policy = EdgePolicy()
        self._policy_of: ServeContext | None = None  # the context _policy was read from: recomputed when it changes

    def policy(self) -> EdgePolicy:
        """The Host/Origin allow-lists of the worker's settings (the defaults while it starts)."""
        ctx = self.predict.ref.ctx
        if ctx is not self._policy_of:
            self._policy, self._policy_of = (EdgePolicy() if ctx is None else EdgePolicy.from_settings(ctx.settings)), ctx
        return self._policy

    def around(self, lifespan: ASGIApp) -> Api:
        """This dispatcher with `lifespan` (BentoML's own app) answering every scope that is not HTTP."""
        return Api(self.predict, self.starlette, lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.lifespan(scope, receive, send)
        if scope["method"] == "POST":  # every state-changing route, predict too (api/edge.py)
            refusal = self.policy().refusal(scope)
            if refusal is not None:
                return await send_bytes(send, refusal.status, error_body(refusal))
        name = predict_name(scope)
        if name is not None:
            return await self.predict.handle(name, scope, receive, send)
        await self.starlette(scope, receive, send)


def build_app(source: ServeContext | ContextRef) -> Api:
    """The app over one worker's ServeContext (or a reference filled in later)."""
    ref = source if isinstance(source, ContextRef) else ContextRef(source)

    def guarded(fn: Handler, route: str, *, limited: bool = False) -> Handler:
        """One admission and failure path, the same as predict's (api/admission.py): a `limited` route's body is
        read first (an upload holds no slot), then the token's outstanding requests and the expected queue time
        are checked (429 with Retry-After); errors are counted by ctx.failed."""

        async def endpoint(request: Request) -> Response:
            try:
                ctx = ref.get()
            except MlboxError as exc:
                return error_response(exc, headers={"Retry-After": "1"})
            if not limited:
                try:
                    return await fn(request)
                except Exception as exc:
                    return error_response(ctx.failed(route, exc, request.url.path))
            admission, token, admitted = ctx.admission, None, False
            try:
                if ctx.auth_required:  # keyed by the token sent; fn authenticates it (an unknown one gets its 401 there)
                    token = bearer_token(request.headers.getlist("authorization"))
                    refusal = admission.token_refusal(token)
                    if refusal is not None:
                        raise refusal
                    admission.token_enter(token)
                body = await _body(request, ctx.max_body)
                refusal = admission.refusal()
                if refusal is not None:
                    raise refusal
                admission.admit()
                admitted = True
                await asyncio.sleep(0)  # those admitted before run first
                turn = admission.turn()
                try:
                    return await fn(Request(request.scope, _replay(body)))
                finally:
                    admitted = False
                    admission.finish(turn)
            except Exception as exc:
                return error_response(ctx.failed(route, exc, request.url.path))
            finally:
                if admitted:  # its client left while it waited for its turn
                    admission.cancel()
                if token is not None:
                    admission.token_leave(token)

        return endpoint

    async def json_body(request: Request) -> dict[str, Any]:
        """The request's JSON object body (empty: {}), within the body limit."""
        raw = await _body(request, ref.get().max_body)
        body = parse_json(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise UsageError("the body must be a JSON object")
        return body

    async def online_features(request: Request) -> Response:
        ctx = ref.get()
        grant = ctx.grant(request.headers.getlist("authorization"), "features.read_online")
        who = grant.actor
        body = parse_json(await _body(request, ctx.max_body))
        if not isinstance(body, dict) or set(body) != {"features", "entities"}:
            raise UsageError('send {"features": ["view:field", ...], "entities": [{"key": value}, ...]}')
        features, entities = body["features"], body["entities"]
        if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
            raise ValidationError('"features" must be a non-empty list of "view:field" strings')
        if not isinstance(entities, list) or not entities or not all(isinstance(e, dict) for e in entities):
            raise ValidationError('"entities" must be a non-empty list of objects')
        if len(entities) > ctx.max_rows:
            raise PayloadTooLarge(f"{len(entities)} entities in one request; at most {ctx.max_rows}")
        ctx.require_scope(grant, [("view", view_of(f)) for f in features])  # every view asked for must be in scope
        from mlbox.security.roles import disclosure  # pii/restricted: raw only with features.read_pii

        protected = disclosure(who, ctx.settings["privacy.protected_reads"])
        values = ctx.box.features.get_online_features(features, entities, with_timestamps=True, protected=protected)
        ctx.metrics.inc("mlbox_requests_total", (("route", "features"), ("status", "200")))
        return _json({"features": values})

    async def push_features(request: Request) -> Response:
        ctx = ref.get()
        grant = ctx.grant(request.headers.getlist("authorization"), "features.write")
        who = grant.actor
        body = parse_json(await _body(request, ctx.max_body))
        if not isinstance(body, dict):
            raise UsageError('send {"view": "name", "rows": [{field: value}, ...]}')
        check_keys(body, {"view", "rows"}, {"view", "rows"})
        view, rows = body["view"], body["rows"]
        if not isinstance(view, str):
            raise ValidationError('"view" must be the name of a feature view')
        ctx.require_scope(grant, [("view", view)])
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise ValidationError('"rows" must be a non-empty list of objects')
        if len(rows) > ctx.max_rows:
            raise PayloadTooLarge(f"{len(rows)} rows in one request; at most {ctx.max_rows}", hint="serve.max_rows")
        version = ctx.box.features.view(view)
        fields = {f.name: f.dtype for f in version.view.fields}
        check_rows(rows, version.entity.join_keys, version.view.timestamp, fields)
        result = ctx.box.features.push(view, rows, actor=who.name)
        ctx.metrics.inc("mlbox_requests_total", (("route", "push"), ("status", "200")))
        return _json(result)

    async def list_deployments(request: Request) -> Response:
        ctx = ref.get()
        grant = ctx.grant(request.headers.getlist("authorization"), "read")
        scopes = grant.scopes  # a scoped token sees only its own deployments
        shown = [d for d in ctx.deployments.all() if scopes is None or scopes.allows("deployment", d.name)]
        return _json({"deployments": [d.as_dict() for d in shown]})

    async def get_deployment(request: Request) -> Response:
        ctx = ref.get()
        ctx.authenticate(request.headers.getlist("authorization"), "read", [("deployment", request.path_params["name"])])
        d = ctx.deployments.get(request.path_params["name"])
        live = ctx.runtime.live.get(d.name)
        return _json({**d.as_dict(), "serving_revision": live.deployment.revision if live else None})

    async def monitoring(request: Request) -> Response:
        from mlbox.api.monitoring import monitoring_view

        ctx = ref.get()
        ctx.authenticate(request.headers.getlist("authorization"), "read", [("deployment", request.path_params["name"])])
        return _json(monitoring_view(ctx.box, request.path_params["name"]))

    async def manage(request: Request) -> Response:
        ctx = ref.get()
        name, action = request.path_params["name"], request.path_params["action"]
        who = ctx.authenticate(request.headers.getlist("authorization"), "deploy.manage", [("deployment", name)])
        body = await json_body(request)
        if action == "canary":
            check_keys(body, {"model", "weight", "sticky_key"}, {"model"})
            weight = body.get("weight", 10)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValidationError('"weight" must be a number between 0 and 100')
            d = ctx.deployments.canary(name, str(body["model"]), float(weight), who.name, body.get("sticky_key"))
        elif action == "shadow":
            check_keys(body, {"model"}, {"model"})
            d = ctx.deployments.shadow(name, None if body["model"] is None else str(body["model"]), who.name)
        elif action == "promote":
            check_keys(body, set(), set())
            d = ctx.deployments.promote(name, who.name)
        else:
            check_keys(body, set(), set())
            d = ctx.deployments.rollback(name, who.name)
        return _json(d.as_dict())

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Public for probes: ready or not and how many deployments and problems; the names of deployments and
        models and the problems' text (which may name paths) only for a caller who may `read` (auth off: all)."""
        ctx = ref.get()
        ready, detail = ctx.readiness()
        status = {"status": "ready" if ready else "not ready"}
        try:
            ctx.authenticate(request.headers.getlist("authorization"), "read")
        except MlboxError:  # no token, a bad one, or too little: the probe's answer only
            counts = {"deployments": len(detail["deployments"]), "problems": len(detail["problems"])}
            return _json({**status, **counts, "detail": "send a token with 'read' for names"}, 200 if ready else 503)
        return _json({**status, **detail}, 200 if ready else 503)

    async def metrics(request: Request) -> Response:
        ctx = ref.get()
        return PlainTextResponse(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(request: Request) -> Response:
        ctx = ref.get()
        grant = ctx.grant(request.headers.getlist("authorization"), "read")  # it names every deployment's input fields
        return _json(openapi_document(scoped_facts(api_facts(ctx), grant.scopes)))

    async def bentoml_schema(request: Request) -> Response:
        ctx = ref.get()
        grant = ctx.grant(request.headers.getlist("authorization"), "read")
        return _json(bentoml_service_schema(scoped_facts(api_facts(ctx), grant.scopes)))

    async def not_found(request: Request, exc: Exception) -> Response:
        from mlbox.errors import NotFound

        if getattr(exc, "status_code", 404) == 405:
            allow = dict(getattr(exc, "headers", None) or {}).get("Allow", "")
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}", hint=f"use {allow}")
            return error_response(error, headers={"Allow": allow})
        return error_response(NotFound(f"no route {request.url.path}", hint="see /openapi.json"))

    # POST /v1/deployments/{name}/predict is not a route here: Api sends it straight to `predict`.
    routes = [
        Route("/v1/features/online", guarded(online_features, "features", limited=True), methods=["POST"]),
        Route("/v1/features/push", guarded(push_features, "push", limited=True), methods=["POST"]),
        Route("/v1/deployments", guarded(list_deployments, "deployments"), methods=["GET"]),
        Route("/v1/deployments/{name}", guarded(get_deployment, "deployments"), methods=["GET"]),
        Route("/v1/deployments/{name}/monitoring", guarded(monitoring, "deployments"), methods=["GET"]),
        Route(
            "/v1/deployments/{name}/{action:str}",
            guarded(_only(manage, {"canary", "shadow", "promote", "rollback"}), "manage"),
            methods=["POST"],
        ),
        Route("/healthz", healthz, methods=["GET"]),  # liveness answers while the worker is still starting
        Route("/livez", healthz, methods=["GET"]),
        Route("/readyz", guarded(readyz, "readyz"), methods=["GET"]),
        Route("/metrics", guarded(metrics, "metrics"), methods=["GET"]),
        Route("/openapi.json", guarded(openapi, "openapi"), methods=["GET"]),
        Route("/schema.json", guarded(bentoml_schema, "openapi"), methods=["GET"]),
    ]
    routes += console_routes(ref, guarded, _json, json_body)  # the management API of `mlbox tui --url`
    starlette = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    starlette.router.redirect_slashes = False  # a stray slash is a 404 in the envelope, not a redirect
    return Api(PredictEndpoint(ref), starlette)


def _replay(body: bytes) -> Receive:
    """A `receive` giving the body already read in one message, then a disconnect."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class MethodNotAllowed(MlboxError):
    """A 405: the path exists, the method does not (the answer carries `Allow`)."""
    status = 405
    code = "method_not_allowed"


def _only(handler: Handler, actions: set[str]) -> Handler:
    async def endpoint(request: Request) -> Response:
        from mlbox.errors import NotFound

        if request.path_params["action"] not in actions:
            raise NotFound(f"no route {request.url.path}", hint=f"actions are {', '.join(sorted(actions))}")
        return await handler(request)

    return endpoint


def view_of(ref: str) -> str:
    """The view a feature reference names: `view@2:field` -> `view`."""
    return ref.partition(":")[0].partition("@")[0]


def scoped_facts(facts: ApiFacts, scopes: Scopes | None) -> ApiFacts:
    """The document's facts as a scoped token may see them: only its deployments and views."""
    if scopes is None:
        return facts
    return dataclasses.replace(
        facts,
        deployments={n: m for n, m in facts.deployments.items() if scopes.allows("deployment", n)},
        views=tuple(v for v in facts.views if scopes.allows("view", v.name)),
        features=tuple(f for f in facts.features if scopes.allows("view", view_of(f))),
    )
