"""The OpenAPI 3.1 document of the HTTP API, written to match what the routes do (a test checks both)."""

from __future__ import annotations

from typing import Any

from mlbox._version import __version__

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad input", 401: "Missing or invalid token", 403: "Not allowed", 404: "Not found", 409: "Conflict",
            413: "Body or rows over the limit", 422: "Invalid fields", 429: "At capacity; see Retry-After"}  # fmt: skip
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"}}]


def openapi_document() -> dict[str, Any]:
    deployment = {"$ref": "#/components/schemas/Deployment"}
    manage = {"responses": {**_json(deployment), **_errors(400, 401, 403, 404, 409, 422)}, "parameters": NAME}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mlbox", "version": __version__},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description": "mlbox API token (mlbx_...)"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["status", "code", "message"], "properties": {
                        "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"},
                        "hint": {"type": ["string", "null"]}}}},
                },  # fmt: skip
                "Deployment": {
                    "type": "object",
                    "properties": {k: {"type": t} for k, t in {
                        "name": "string", "primary_model": "string", "canary_model": ["string", "null"],
                        "canary_weight": "number", "sticky_key": ["string", "null"], "shadow_model": ["string", "null"],
                        "previous_primary": ["string", "null"], "revision": "integer"}.items()},
                },  # fmt: skip
                "PredictRequest": {
                    "oneOf": [
                        {"type": "object", "required": ["rows"], "additionalProperties": False,
                         "properties": {"rows": {"type": "array", "minItems": 1, "items": {"type": "object"}}}},
                        {"type": "object", "required": ["entities"], "additionalProperties": False,
                         "properties": {"entities": {"type": "array", "minItems": 1, "items": {"type": "object"}}}},
                    ]
                },  # fmt: skip
                "PredictResponse": {
                    "type": "object",
                    "required": ["predictions", "model", "variant", "request_id"],
                    "properties": {
                        "predictions": {"type": "array", "description": "{class: probability} per row, or a number per row"},
                        "model": {"type": "string", "description": "NAME:VERSION that answered"},
                        "variant": {"enum": ["primary", "canary"]},
                        "request_id": {"type": "string"},
                    },
                },
            },
        },
        "security": [{"token": []}],
        "paths": {
            "/v1/deployments/{name}/predict": {"post": {
                "summary": "Predict with a deployment (primary or canary by weight; shadow off the request path)",
                "parameters": [*NAME, {"name": "X-Request-Id", "in": "header", "required": False,
                               "description": "kept as the request id (echoed in the body and the X-Request-Id header)",
                               "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": {**_json({"$ref": "#/components/schemas/PredictResponse"}), **_errors(400, 401, 403, 404, 413, 422, 429)},
            }},  # fmt: skip
            "/v1/features/online": {"post": {
                "summary": "Latest online feature values per entity",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object",
                    "required": ["features", "entities"], "properties": {"features": {"type": "array", "items": {"type": "string"}},
                    "entities": {"type": "array", "items": {"type": "object"}}}}}}},
                "responses": {**_json({"type": "object", "properties": {"features": {"type": "object"}}}), **_errors(400, 401, 403, 404, 413, 422, 429)},
            }},  # fmt: skip
            "/v1/deployments": {"get": {"summary": "All deployments", "responses": {
                **_json({"type": "object", "properties": {"deployments": {"type": "array", "items": deployment}}}), **_errors(401, 403)}}},
            "/v1/deployments/{name}": {"get": {"summary": "One deployment", "parameters": NAME,
                                               "responses": {**_json(deployment), **_errors(401, 403, 404)}}},
            "/v1/deployments/{name}/canary": {"post": {"summary": "Set the canary model and weight", **manage,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["model"],
                    "properties": {"model": {"type": "string"}, "weight": {"type": "number", "minimum": 0, "maximum": 100},
                                   "sticky_key": {"type": ["string", "null"]}}}}}}}},
            "/v1/deployments/{name}/shadow": {"post": {"summary": "Set (or clear with null) the shadow model", **manage,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["model"],
                    "properties": {"model": {"type": ["string", "null"]}}}}}}}},
            "/v1/deployments/{name}/promote": {"post": {"summary": "Make the canary the primary", **manage}},
            "/v1/deployments/{name}/rollback": {"post": {"summary": "Canary weight to 0, or the previous primary back", **manage}},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": _json({"type": "object"})}},
            "/livez": {"get": {"summary": "Liveness (Kubernetes-style name)", "security": [], "responses": _json({"type": "object"})}},
            "/readyz": {"get": {"summary": "Readiness: deployments loaded", "security": [],
                                "responses": {**_json({"type": "object"}), "503": {"description": "Not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                                 "responses": {"200": {"description": "text exposition", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": _json({"type": "object"})}},
        },  # fmt: skip
    }
