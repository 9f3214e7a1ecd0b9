"""The OpenAPI 3.1 document of the HTTP API, generated from the live deployments and feature views.

Each deployment gets its own predict operation whose request schema is its primary model's
signature (numbers, categorical levels as enums, nulls only where training saw them, no
other fields, at most `serve.max_rows` rows) and whose response schema is its output
(probabilities per class, or a number). The rest of the document is fixed; a test checks
it against the app's routes, and schemathesis checks it against a real server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlbox._version import __version__
from mlbox.api.monitoring import MONITORING_SCHEMA
from mlbox.flavors.signature import Column, Signature
from mlbox.registry.store import ALIASES, MODEL_PATTERN
from mlbox.types import NAME_PATTERN

if TYPE_CHECKING:
    from mlbox.api.context import ServeContext

ERROR = {"$ref": "#/components/schemas/Error"}
FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
NAME = {"type": "string", "pattern": NAME_PATTERN.pattern}
# NAME, NAME:VERSION, NAME:ALIAS or NAME:latest, as registry.parse_ref reads it
MODEL_REF = {"type": "string", "pattern": MODEL_PATTERN.pattern[:-1] + rf"(:([0-9]+|{'|'.join((*ALIASES, 'latest'))}))?$"}
REQUEST_ID = {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}
STATUS_TEXT = {
    400: "Bad input", 401: "Missing or invalid token", 403: "Not allowed", 404: "Not found",
    405: "Method not allowed", 409: "Conflict with the current state", 413: "Body or rows over the limit",
    422: "Invalid fields", 429: "At capacity; see Retry-After", 500: "Internal error; see the server log",
}  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """What the document needs of one served model: its reference, signature and entity keys (if from the store)."""

    ref: str
    signature: Signature
    entity_keys: Mapping[str, str] | None  # join key -> dtype, or None: the model takes rows only
    extra: str | None = None  # the deployment's sticky key when it is not a model input: a row may carry it


@dataclass(frozen=True)
class ViewInfo:
    """A feature view's push schema: its join keys, timestamp column and fields with their dtypes."""

    name: str
    keys: Mapping[str, str]
    timestamp: str
    fields: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class ApiFacts:
    """Everything the generated parts of the document come from, read from one worker's state."""

    deployments: Mapping[str, tuple[ModelInfo, ModelInfo | None]] = field(default_factory=dict)  # primary, canary
    views: tuple[ViewInfo, ...] = ()
    features: tuple[str, ...] = ()  # "view:field" references served online
    keys: Mapping[str, str] = field(default_factory=dict)  # every entity join key -> dtype
    duplicates: str = "reject"  # features.duplicate_policy: what push does with a repeated (entity, timestamp)
    max_rows: int = 1000


def api_facts(ctx: ServeContext) -> ApiFacts:
    """The facts of one worker: its live deployments' models and the box's feature views."""
    catalog = ctx.box.features.catalog

    def info(model: Any, sticky: str | None) -> ModelInfo:
        refs = [model.feature_refs.get(c.name) for c in model.signature.columns]
        keys: dict[str, str] | None = None
        if refs and all(refs):
            keys = {}
            for ref in refs:
                view, _, _ = str(ref).partition(":")
                name, _, version = view.partition("@")
                keys |= dict(catalog.view(name, int(version) if version else None).entity.join_keys)
        extra = None if sticky is None or sticky in model.signature.names else sticky
        return ModelInfo(model.ref, model.signature, keys, extra)

    deployments = {}
    for name, live in ctx.runtime.live.items():
        sticky = live.split.sticky_key
        deployments[name] = (info(live.primary, sticky), None if live.canary is None else info(live.canary, sticky))
    latest = catalog.latest_views()
    views = tuple(
        ViewInfo(v.name, dict(v.entity.join_keys), v.view.timestamp, {f.name: f.dtype for f in v.view.fields})
        for v in latest
        if not v.view.transformation  # a derived view is ingested from its source, never pushed
    )
    features = tuple(f"{v.name}:{f.name}" for v in latest for f in v.view.fields)
    keys = {k: t for v in latest for k, t in v.entity.join_keys.items()}
    return ApiFacts(deployments=deployments, views=views, features=features, keys=keys, max_rows=ctx.max_rows,
                    duplicates=ctx.settings["features.duplicate_policy"])  # fmt: skip


# schema pieces ---------------------------------------------------------------------------


def _errors(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # every route taking a body (so 413) also answers 415 to a declared type other than JSON (api/edge.py)
    for c in sorted({*codes, 415}) if 413 in codes else codes:
        text = STATUS_TEXT.get(c, "Body not declared as application/json")
        out[str(c)] = {"description": text, "content": {"application/json": {"schema": ERROR}}}
        if c == 405:
            out[str(c)]["headers"] = {"Allow": {"required": True, "description": "the methods the path takes",
                                                "schema": {"type": "string"}}}  # fmt: skip
    return out


def _ok(schema: dict[str, Any], description: str = "OK", links: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if links:
        answer["links"] = links
    return {"200": answer}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _nullable(schema: dict[str, Any], nullable: bool) -> dict[str, Any]:
    if not nullable:
        return schema
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    return {**schema, "type": [schema["type"], "null"]}


def column_schema(col: Column, nullable: bool = False) -> dict[str, Any]:
    """A request field: a finite float32-range number, or one of the levels seen in training."""
    if col.kind == "numeric":
        schema: dict[str, Any] = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    elif col.dtype == "bool":
        # booleans are levels "False"/"True"; the JSON booleans are read as those strings
        levels: list[Any] = list(col.levels)
        schema = {"enum": [*levels, *(lvl == "True" for lvl in levels if lvl in ("True", "False"))]}
    else:
        schema = {"type": "string", "enum": list(col.levels)}
    return _nullable(schema, nullable or col.nullable)


def row_schema(signature: Signature, extra: str | None = None) -> dict[str, Any]:
    """A request row: every input of the model, and optionally the sticky key when it is not an input."""
    properties = {c.name: column_schema(c) for c in signature.columns}
    if extra is not None:
        properties[extra] = {"type": ["string", "integer", "null"], "description": "the sticky key (not a model input)"}
    required = [c.name for c in signature.columns if c.required]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def key_schema(dtype: str) -> dict[str, Any]:
    # string keys also take integers (customer ids are often numbers in JSON)
    return dict(INT64) if dtype in ("int64", "int32") else {"type": ["string", "integer"]}


def entity_schema(keys: Mapping[str, str]) -> dict[str, Any]:
    """An entity to look up: its join keys; other fields (a sticky key, say) are allowed and not model inputs."""
    return {"type": "object", "properties": {k: key_schema(t) for k, t in keys.items()}, "required": sorted(keys)}


def _items(item: dict[str, Any], max_rows: int) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": 1, "maxItems": max_rows}


def predict_request_schema(model: ModelInfo, max_rows: int) -> dict[str, Any]:
    forms = [{"type": "object", "required": ["rows"], "additionalProperties": False,
              "properties": {"rows": _items(row_schema(model.signature, model.extra), max_rows)}}]  # fmt: skip
    if model.entity_keys is not None:
        forms.append({"type": "object", "required": ["entities"], "additionalProperties": False,
                      "properties": {"entities": _items(entity_schema(model.entity_keys), max_rows)}})  # fmt: skip
    return forms[0] if len(forms) == 1 else {"oneOf": forms}


def prediction_schema(signature: Signature) -> dict[str, Any]:
    if signature.task == "classification":
        classes = [str(c) for c in signature.classes]
        return {"type": "object", "description": "probability of each class",
                "properties": {c: {"type": "number", "minimum": 0, "maximum": 1} for c in classes},
                "required": classes, "additionalProperties": False}  # fmt: skip
    return {"type": "number", "description": "the predicted value"}


def predict_response_schema(models: Iterable[ModelInfo]) -> dict[str, Any]:
    per_row = [prediction_schema(m.signature) for m in models]
    unique = [s for i, s in enumerate(per_row) if s not in per_row[:i]]
    return {
        "type": "object",
        "required": ["predictions", "model", "variant", "request_id"],
        "additionalProperties": False,
        "properties": {
            "predictions": {"type": "array", "items": unique[0] if len(unique) == 1 else {"anyOf": unique},
                            "description": "one per request row, in order"},  # fmt: skip
            "model": {**MODEL_REF, "description": "NAME:VERSION that answered"},
            "variant": {"enum": ["primary", "canary"]},
            "request_id": REQUEST_ID,
        },
    }


PUSH_TYPES: dict[str, dict[str, Any]] = {
    "int64": INT64, "int32": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    "float64": {"type": "number"}, "float32": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
    "string": {"type": "string"}, "bool": {"type": "boolean"},
    "timestamp": {"type": "string", "format": "date-time"}, "date": {"type": "string", "format": "date"},
}  # fmt: skip


def push_schema(views: tuple[ViewInfo, ...], max_rows: int, duplicates: str = "keep-last") -> dict[str, Any]:
    """`{"view", "rows"}`, one form per pushable view: every column present (fields may be null), nothing else."""
    forms = []
    for v in views:
        props = {k: key_schema(t) for k, t in v.keys.items()}
        props[v.timestamp] = PUSH_TYPES["timestamp"]
        props |= {f: _nullable(PUSH_TYPES.get(t, {"type": "string"}), True) for f, t in v.fields.items()}
        row = {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
        rows = _items(row, max_rows)
        if duplicates == "reject":
            # JSON Schema cannot say "unique by (keys, timestamp)"; identical rows at least are refused
            rows |= {"uniqueItems": True, "description": f"no two rows with the same {', '.join([*v.keys, v.timestamp])} "
                                                        "(features.duplicate_policy = reject): 422"}  # fmt: skip
        forms.append({"type": "object", "required": ["view", "rows"], "additionalProperties": False,
                      "properties": {"view": {"const": v.name}, "rows": rows}})  # fmt: skip
    if not forms:
        rows = _items({"type": "object"}, max_rows)
        return {"type": "object", "required": ["view", "rows"], "properties": {"view": NAME, "rows": rows}}
    return forms[0] if len(forms) == 1 else {"oneOf": forms}


# the document ---------------------------------------------------------------------------


def _predict_operation(name: str, primary: ModelInfo, canary: ModelInfo | None, max_rows: int) -> dict[str, Any]:
    served = [primary] if canary is None else [primary, canary]
    return {"post": {
        "operationId": f"predict_{name}",
        "summary": f"Predict with {name} ({' or '.join(m.ref for m in served)}; shadow off the request path)",
        "parameters": [{"name": "X-Request-Id", "in": "header", "required": False, "schema": REQUEST_ID,
                        "description": "kept as the request id (echoed in the body and the X-Request-Id header)"}],
        "requestBody": _body(predict_request_schema(primary, max_rows)),
        "responses": {
            "200": {"description": "One prediction per row", "headers": {"X-Request-Id": {"schema": REQUEST_ID}},
                    "content": {"application/json": {"schema": predict_response_schema(served)}}},
            **_errors(400, 401, 403, 404, 405, 413, 422, 429, 500),
        },
    }}  # fmt: skip


def openapi_document(facts: ApiFacts | None = None) -> dict[str, Any]:
    """The whole document; without `facts` (no worker yet) it lists no deployments."""
    facts = facts or ApiFacts()
    deployment = {"$ref": "#/components/schemas/Deployment"}
    name_param = [{"name": "name", "in": "path", "required": True, "schema": NAME}]
    to_deployment = {"GetDeployment": {"operationId": "get_deployment", "parameters": {"name": "$response.body#/name"}}}
    manage_errors = _errors(400, 401, 403, 404, 405, 409, 413, 422, 429, 500)

    def manage(summary: str, body: dict[str, Any] | None, op: str) -> dict[str, Any]:
        operation: dict[str, Any] = {"operationId": op, "summary": summary, "parameters": name_param,
                                     "responses": {**_ok(deployment, links=to_deployment), **manage_errors}}  # fmt: skip
        if body is not None:
            operation["requestBody"] = _body(body)
        return {"post": operation}

    public: dict[str, Any] = {"security": []}
    paths: dict[str, Any] = {
        f"/v1/deployments/{name}/predict": _predict_operation(name, primary, canary, facts.max_rows)
        for name, (primary, canary) in sorted(facts.deployments.items())
    }
    features = {"type": "string", "enum": list(facts.features)} if facts.features else {"type": "string"}
    keys = facts.keys
    paths |= {
        "/v1/features/online": {"post": {
            "operationId": "online_features", "summary": "Latest online feature values per entity",
            "requestBody": _body({"type": "object", "required": ["features", "entities"], "additionalProperties": False,
                "properties": {"features": {"type": "array", "items": features, "minItems": 1},
                               "entities": _items(entity_schema(keys), facts.max_rows)}}),
            "responses": {**_ok({"type": "object", "required": ["features"], "properties": {"features": {
                "type": "object", "additionalProperties": {"type": "array"}}}}), **_errors(400, 401, 403, 404, 405, 413, 422, 429, 500)},
        }},
        "/v1/features/push": {"post": {
            "operationId": "push_features",
            "summary": "Write rows of a view to the online store now and to the offline store in the next micro-batch",
            "requestBody": _body(push_schema(facts.views, facts.max_rows, facts.duplicates)),
            "responses": {**_ok({"type": "object"}), **_errors(400, 401, 403, 404, 405, 409, 413, 422, 429, 500)},
        }},
        "/v1/deployments": {"get": {"operationId": "list_deployments", "summary": "All deployments", "responses": {
            **_ok({"type": "object", "required": ["deployments"], "properties": {"deployments": {"type": "array", "items": deployment}}},
                  links={"GetDeployment": {"operationId": "get_deployment",
                                           "parameters": {"name": "$response.body#/deployments/0/name"}}}),
            **_errors(401, 403, 405, 429, 500)}}},
        "/v1/deployments/{name}": {"get": {"operationId": "get_deployment", "summary": "One deployment", "parameters": name_param,
            "responses": {**_ok({"allOf": [deployment, {"type": "object", "required": ["serving_revision"],
                "properties": {"serving_revision": {"type": ["integer", "null"]}}}]}), **_errors(401, 403, 404, 405, 429, 500)}}},
        "/v1/deployments/{name}/monitoring": {"get": {"operationId": "get_monitoring",
            "summary": "Latest drift, quality and A/B verdicts, the policy and recent actions", "parameters": name_param,
            "responses": {**_ok(MONITORING_SCHEMA), **_errors(401, 403, 404, 405, 429, 500)}}},
        "/v1/deployments/{name}/canary": manage("Set the canary model and weight", {
            "type": "object", "required": ["model"], "additionalProperties": False,
            "properties": {"model": MODEL_REF, "weight": {"type": "number", "minimum": 0, "maximum": 100},
                           "sticky_key": {"anyOf": [NAME, {"type": "null"}]}}}, "set_canary"),
        "/v1/deployments/{name}/shadow": manage("Set (or clear with null) the shadow model", {
            "type": "object", "required": ["model"], "additionalProperties": False,
            "properties": {"model": {"anyOf": [MODEL_REF, {"type": "null"}]}}}, "set_shadow"),
        "/v1/deployments/{name}/promote": manage("Make the canary the primary", None, "promote"),
        "/v1/deployments/{name}/rollback": manage("Canary weight to 0, or the previous primary back", None, "rollback"),
        "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness", **public, "responses": {
            **_ok({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}), **_errors(405)}}},
        "/livez": {"get": {"operationId": "livez", "summary": "Liveness (Kubernetes-style name)", **public, "responses": {
            **_ok({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}), **_errors(405)}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Readiness: deployments loaded", **public, "responses": {
            **_ok({"$ref": "#/components/schemas/Readiness"}),
            "503": {"description": "Not ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}},
            **_errors(405, 429, 500)}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics", **public, "responses": {
            "200": {"description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(405, 429, 500)}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "responses": {
            **_ok({"type": "object", "required": ["openapi", "paths"]}), **_errors(401, 403, 405, 429, 500)}}},
        "/schema.json": {"get": {"operationId": "bentoml_schema", "summary": "The predict endpoints for BentoML's client",
            "responses": {**_ok({"type": "object", "required": ["name", "type", "routes"]}), **_errors(401, 403, 405, 429, 500)}}},
    }  # fmt: skip
    from mlbox.api.openapi_console import console_paths  # imports this module's pieces: lazily, no cycle

    paths |= console_paths()
    nullable_string = {"type": ["string", "null"]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mlbox", "version": __version__},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description": "mlbox API token (mlbx_...)"}},
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"], "additionalProperties": False,
                    "properties": {"error": {"type": "object", "required": ["status", "code", "message", "hint"],
                        "additionalProperties": False, "properties": {
                        "status": {"type": "integer", "minimum": 400, "maximum": 599}, "code": {"type": "string"},
                        "message": {"type": "string"}, "hint": nullable_string}}},
                },
                "Deployment": {
                    "type": "object",
                    "required": ["name", "primary_model", "canary_model", "canary_weight", "sticky_key", "shadow_model",
                                 "previous_primary", "revision"],
                    "properties": {
                        "name": NAME, "primary_model": {"type": "string"}, "canary_model": nullable_string,
                        "canary_weight": {"type": "number", "minimum": 0, "maximum": 100}, "sticky_key": nullable_string,
                        "shadow_model": nullable_string, "previous_primary": nullable_string, "revision": {"type": "integer"}},
                },
                "Readiness": {
                    "type": "object", "required": ["status", "deployments", "models", "problems"],
                    "properties": {"status": {"enum": ["ready", "not ready"]}, "deployments": {"type": "array", "items": NAME},
                                   "models": {"type": "object", "description": "deployment -> variant -> the model and the "
                                              "onnxruntime execution provider it runs on",
                                              "additionalProperties": {"type": "object", "additionalProperties": {
                                                  "type": "object", "required": ["model", "provider"],
                                                  "properties": {"model": {"type": "string"}, "provider": {"type": "string"}}}}},
                                   "problems": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
            },
        },  # fmt: skip
        "security": [{"token": []}],
        "paths": paths,
    }


def bentoml_schema(facts: ApiFacts) -> dict[str, Any]:
    """`/schema.json` as BentoML's client reads it: one endpoint per deployment, posting to its predict route.

    The client builds a JSON body from keyword arguments named in `input.properties`, so
    `client.call("churn", rows=[...])` (or `client.churn(rows=[...])`) posts `{"rows": [...]}`.
    """
    routes = []
    for name, (primary, canary) in sorted(facts.deployments.items()):
        form = predict_request_schema(primary, facts.max_rows)
        properties: dict[str, Any] = {}
        for option in form.get("oneOf", [form]):
            properties |= option["properties"]
        served = [primary] if canary is None else [primary, canary]
        routes.append({
            "name": name, "route": f"/v1/deployments/{name}/predict",
            "description": f"Predict with deployment {name}: pass rows=[...] (or entities=[...] for a feature-store model)",
            "batchable": False, "is_task": False,
            "input": {"type": "object", "title": f"{name}_input", "properties": properties},
            "output": predict_response_schema(served),
        })  # fmt: skip
    return {"name": "mlbox", "type": "service", "routes": routes, "description": "Every deployment of one box."}
