"""`POST /v1/deployments/{name}/predict` as a raw ASGI endpoint: the one hot route.

Measured on 2 cores (docs/serving.md), Starlette's router, middleware and Request/Response
objects cost about as much as a 200-tree model; this endpoint reads and writes the ASGI
messages itself. It keeps everything the other routes have: the error envelope, auth, the
body and row limits, admission by queue time (api/admission.py) and the metrics. The
request path does only what the answer needs plus one append of its log record; the
prediction log and the shadow run in the worker's sidecar process (serve/predlog/).

A request is routed as a whole: the first row's value of the deployment's sticky key picks the
variant for every row. Rows may carry the sticky key besides the model's inputs when it is not
one of them; it is never fed to the model, and the log records it for every row.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from mlbox.api.asgi import (
    JSON_HEADERS, RETRY_AFTER, ClientGone, Receive, Scope, Send, error_body, error_headers, read_body, send_bytes,
)  # fmt: skip
from mlbox.api.context import ServeContext
from mlbox.errors import Overloaded, UsageError, ValidationError
from mlbox.serve.predlog.wire import Record
from mlbox.serve.runtime import LiveDeployment, LoadedModel
from mlbox.serve.validation import encode_rows, parse_json, predict_request, sticky_extra, without

PREFIX, SUFFIX = "/v1/deployments/", "/predict"
NUMPY = orjson.OPT_SERIALIZE_NUMPY
NO_HEADERS: tuple[tuple[bytes, bytes], ...] = ()
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class ContextRef:
    """Where the app finds its worker's ServeContext; a BentoML worker fills it in after it starts."""

    def __init__(self, ctx: ServeContext | None = None) -> None:
        self.ctx = ctx

    def get(self) -> ServeContext:
        if self.ctx is None:
            raise Overloaded("the server is starting", hint="retry in a second")
        return self.ctx


def predict_name(scope: Scope) -> str | None:
    """The deployment name when `scope` is a POST to the predict route, else None."""
    path: str = scope["path"]
    if scope["method"] == "POST" and path.startswith(PREFIX) and path.endswith(SUFFIX):
        name = path[len(PREFIX) : -len(SUFFIX)]
        if name and "/" not in name:
            return name
    return None


class PredictEndpoint:
    """The predict route as ASGI: auth, per-token limit, body, admission by queue time, inference, answer, log record."""

    def __init__(self, ref: ContextRef) -> None:
        self.ref = ref

    async def handle(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            ctx = self.ref.get()
        except Overloaded as exc:
            return await send_bytes(send, 429, error_body(exc), (*JSON_HEADERS, *RETRY_AFTER))
        routed: list[str] = []  # the variant and its model, once the request is routed: its errors are counted with it
        started = time.perf_counter()
        try:
            body, request_id = await self.predict(ctx, name, scope, receive, routed)
            status, extra = 200, NO_HEADERS
        except ClientGone:
            return
        except Exception as exc:
            error = ctx.failed("predict", exc, scope["path"], name, routed[0] if routed else "")
            status, body, request_id, extra = error.status, error_body(error), "", error_headers(error)
            if routed:  # a routed failure is logged with its variant: monitoring's canary error rate reads it
                latency = (time.perf_counter() - started) * 1000
                ctx.offload.append(Record(time.time(), next(ctx.request_ids), name, routed[1], routed[0], False, latency,
                                          None, "[]", None, f"{error.status} {error.code}: {error}"[:500]))  # fmt: skip
        headers = (*JSON_HEADERS, *extra) if not request_id else (*JSON_HEADERS, (b"x-request-id", request_id.encode()))
        await send_bytes(send, status, body, headers)

    async def predict(
        self, ctx: ServeContext, name: str, scope: Scope, receive: Receive, routed: list[str]
    ) -> tuple[bytes, str]:
        started = time.perf_counter()
        length = request_id = None
        auth: list[str] = []  # every Authorization header: more than one is refused (ctx.authenticate)
        for key, value in scope["headers"]:
            if key == b"authorization":
                auth.append(value.decode("latin-1"))
            elif key == b"content-length":
                length = value
            elif key == b"x-request-id":
                request_id = value.decode("latin-1")
        ctx.authenticate(auth, "predict", (("deployment", name),))  # a scoped token: before the name is looked up
        admission = ctx.admission
        token = auth[0] if ctx.auth_required else None  # one token's requests outstanding are limited (api/admission.py)
        if token is not None:
            refusal = admission.token_refusal(token)
            if refusal is not None:
                raise refusal
            admission.token_enter(token)
        try:
            live = ctx.runtime.get(name)
            if request_id is not None and not REQUEST_ID.fullmatch(request_id):
                raise UsageError("invalid X-Request-ID header", hint="1 to 128 of A-Z a-z 0-9 . _ : -")
            raw = await read_body(length, receive, ctx.max_body)  # before admission: an upload holds no slot
            refusal = admission.refusal()  # admitted only if its expected queue time is under serve.max_queue_ms
            if refusal is not None:
                raise refusal
            admission.admit()
            try:
                await asyncio.sleep(0)  # one turn of the loop: every request admitted before this one runs first
            except BaseException:
                admission.cancel()
                raise
            turn = admission.turn()
            ready = scope.get("mlbox.ready")  # stamped by the edge protocol: when it was ready, and how many were ahead
            if ready is not None:
                admission.waited(turn - ready[0], ready[1])
            try:
                return self.answer(ctx, name, live, raw, request_id, started, routed)
            finally:
                admission.finish(turn)
        finally:
            if token is not None:
                admission.token_leave(token)

    def answer(
        self, ctx: ServeContext, name: str, live: LiveDeployment, raw: bytes, request_id: str | None, started: float,
        routed: list[str],
    ) -> tuple[bytes, str]:  # fmt: skip
        """An admitted request's work, in one go: parse, route, infer, answer, and its log record."""
        body = parse_json(raw)
        kind, items = predict_request(body, ctx.max_rows)
        split = live.split
        sticky = split.sticky_key
        key = None if sticky is None else items[0].get(sticky)  # the first row decides for the whole request
        variant = split.route(key)
        routed.append(variant)
        model = live.canary if variant == "canary" and live.canary is not None else live.primary
        routed.append(model.ref)
        rows: Sequence[Mapping[str, Any]]
        if kind == "rows":
            extra = None if sticky is None else sticky_extra(model.signature, sticky)
            X = encode_rows(model.signature, items, kind, extra=extra, levels=True)  # the document's enums
            rows = items if extra is None else without(items, extra)  # the log keeps what the model saw
        else:
            rows = entity_rows(ctx, model, items)
            X = encode_rows(model.signature, rows, kind, allow_null=True)
        pred = model.predict(X)
        outputs = orjson.dumps(model.outputs(pred))
        if request_id is None:
            request_id = next(ctx.request_ids)
        meta = orjson.dumps({"model": model.ref, "variant": variant, "request_id": request_id})
        answer = b'{"predictions":' + outputs + b"," + meta[1:]
        latency = (time.perf_counter() - started) * 1000
        ctx.metrics.request("predict", name, variant, latency)
        # the entity of every row, in order, so that labels attach to rows (serve/labels.py)
        if kind == "entities":
            entity: str | None = orjson.dumps(items, default=str, option=NUMPY).decode()
        elif sticky is not None:
            keys = [{sticky: key}] if len(items) == 1 else [{sticky: item.get(sticky)} for item in items]
            entity = orjson.dumps(keys, default=str, option=NUMPY).decode()
        else:
            entity = None
        inputs = orjson.dumps(rows, default=str, option=NUMPY).decode()
        # positional: keywords cost a NamedTuple about 0.5 us more, on every request (measured)
        record = Record(time.time(), request_id, name, model.ref, variant, False, latency, entity, inputs,
                        outputs.decode(), None)  # fmt: skip
        ctx.offload.append(record, None if live.shadow is None else live.shadow.ref)
        return answer, request_id


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
