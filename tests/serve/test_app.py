"""mlbox's app in-process through httpx.ASGITransport: the error envelope for every bad request, the generated
OpenAPI document against the routes and the models' signatures, 405 with Allow, the push route's checks, auth
switched off, body limits, and the one dispatcher under BentoML.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.routing import Route

from mlbox.api.app import Api, build_app
from mlbox.api.predict import ContextRef
from mlbox.api.context import ServeContext
from mlbox.api.openapi import api_facts, openapi_document
from mlbox.config import load_settings
from mlbox.flavors import onnx as onnx_files
from mlbox.flavors.signature import Signature
from mlbox.types import NAME_PATTERN

from ..conftest import OS_USER
from ._cases import CASES, GOOD, IDS, MAX_ROWS, Case
from .conftest import (
    AsgiClient, Template, assert_error, check_documented_operations, copy_box, open_box, sample_rows, subprocess_env, wait_for,
)  # fmt: skip

MANAGE_ACTIONS = ("canary", "shadow", "promote", "rollback")
PROFILE = {"customer_id": 7, "updated_at": "2026-01-01T00:00:00Z", "age": 30, "plan": "basic", "region": None,
           "monthly_charges": 12.5, "email": None}  # a customer_profile row (the template's view without a transformation)


@pytest.fixture(scope="module")
def app_home(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = copy_box(serve_template, tmp_path_factory.mktemp("app") / "box")
    with open_box(home) as box:
        box.deployments.create("bad", "churn:1", OS_USER)
        box.deployments.create("fs", "churn_fs:1", OS_USER)
    return home


def make_context(home: Path, **environ: str) -> ServeContext:
    ctx = ServeContext(load_settings(home, environ=environ))
    ctx.start()
    return ctx


@pytest.fixture(scope="module")
def ctx(app_home: Path) -> Iterator[ServeContext]:
    ctx = make_context(app_home, MLBOX_SERVE_MAX_ROWS=str(MAX_ROWS))
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def api(ctx: ServeContext) -> AsgiClient:
    return AsgiClient(build_app(ctx))


@pytest.fixture(scope="module")
def open_api(app_home: Path) -> Iterator[AsgiClient]:
    """No auth, and a 2,000-byte body limit."""
    ctx = make_context(app_home, MLBOX_SERVE_AUTH="false", MLBOX_SERVE_MAX_BODY_BYTES="2000")
    try:
        yield AsgiClient(build_app(ctx))
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def tokens(serve_template: Template) -> dict[str, str]:
    return serve_template.tokens


def bearer(tokens: dict[str, str], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[role]}"}


# bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_request_gets_the_error_envelope(api: AsgiClient, tokens: dict[str, str], case: Case) -> None:
    response = api.request(case.method, case.path, **case.request(tokens))
    assert_error(response, case.status, case.code, case.mentions)


def test_promote_expect_takes_any_json_integer(api: AsgiClient, tokens: dict[str, str]) -> None:
    """`expect` is an integer in the document, and 1.0 is one to JSON Schema (schemathesis sent 2.0): accepted as 1."""
    url, admin = "/v1/console/models/churn:1/promote", bearer(tokens, "admin")
    assert api.post(url, json={"alias": "staging", "expect": None}, headers=admin).status_code == 200
    assert api.post(url, json={"alias": "staging", "expect": 1.0}, headers=admin).status_code == 200  # compare-and-set on 1
    for bad in (1.5, True, "1"):
        assert_error(api.post(url, json={"alias": "staging", "expect": bad}, headers=admin), 422, "invalid", ('"expect"',))


def test_bad_requests_change_nothing(api: AsgiClient, app_home: Path) -> None:
    """The management cases above all failed: `bad` is still at revision 1 with no canary or shadow."""
    with open_box(app_home) as box:
        d = box.deployments.get("bad")
    assert (d.revision, d.primary_model, d.canary_model, d.shadow_model) == (1, "churn:1", None, None)


# good requests --------------------------------------------------------------------------------


def local_predictions(home: Path, ref: str, rows: list[dict[str, Any]], tmp_path: Path) -> np.ndarray:
    """What the registered ONNX file of `ref` answers for `rows`, encoded by its signature."""
    with open_box(home) as box:
        version = box.registry.get(ref)
        path = box.registry.export(ref, "onnx", tmp_path / f"{ref.replace(':', '_')}.onnx")[0]
    X = Signature.from_dict(version.signature).encode(pd.DataFrame(rows))
    return np.asarray(onnx_files.run(onnx_files.session(path, 1), X))


def test_predict_answers_with_the_models_probabilities(api: AsgiClient, tokens: dict[str, str], app_home: Path, tmp_path: Path) -> None:
    rows = sample_rows(5)
    response = api.post("/v1/deployments/bad/predict", json={"rows": rows}, headers=bearer(tokens, "service"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"predictions", "model", "variant", "request_id"}
    assert (body["model"], body["variant"]) == ("churn:1", "primary")
    assert isinstance(body["request_id"], str) and body["request_id"]
    expected = local_predictions(app_home, "churn:1", rows, tmp_path)
    got = np.array([[p["0"], p["1"]] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert all(abs(p["0"] + p["1"] - 1) < 1e-5 for p in body["predictions"])


def test_client_request_id_is_kept(api: AsgiClient, tokens: dict[str, str]) -> None:
    headers = {**bearer(tokens, "service"), "X-Request-Id": "order-42"}
    response = api.post("/v1/deployments/bad/predict", json={"rows": [GOOD]}, headers=headers)
    assert response.json()["request_id"] == "order-42"
    assert response.headers["x-request-id"] == "order-42"
    generated = api.post("/v1/deployments/bad/predict", json={"rows": [GOOD]}, headers=bearer(tokens, "service"))
    assert generated.headers["x-request-id"] == generated.json()["request_id"]


@pytest.mark.parametrize("value", ["x" * 129, "a b", "order/42", "<script>"])
def test_a_request_id_that_is_not_a_plain_token_is_refused(api: AsgiClient, tokens: dict[str, str], value: str) -> None:
    headers = {**bearer(tokens, "service"), "X-Request-Id": value}
    response = api.post("/v1/deployments/bad/predict", json={"rows": [GOOD]}, headers=headers)
    assert_error(response, 400, "bad_request", ("X-Request-ID",))


def test_a_dead_sidecar_shows_in_readiness_and_is_started_again(app_home: Path, serve_template: Template) -> None:
    ctx = make_context(app_home)
    try:
        api = AsgiClient(build_app(ctx))
        named = bearer(serve_template.tokens, "viewer")  # the problems' names need `read`
        assert api.get("/readyz").status_code == 200
        proc = ctx.offload._proc
        assert proc is not None
        proc.kill()
        proc.wait(10)
        ready = api.get("/readyz", headers=named)
        assert ready.status_code == 503 and "sidecar" in ready.json()["problems"]
        assert api.get("/readyz").json()["problems"] == 1  # a probe without a token: the count only
        wait_for(lambda: api.get("/readyz").status_code == 200, 10, "a new sidecar")
        assert 'mlbox_sidecar_restarts_total 1' in api.get("/metrics").text
    finally:
        ctx.close()


def test_every_role_with_predict_may_predict(api: AsgiClient, tokens: dict[str, str]) -> None:
    for role in ("service", "data-scientist", "ml-engineer", "admin"):
        response = api.post("/v1/deployments/bad/predict", json={"rows": [GOOD]}, headers=bearer(tokens, role))
        assert response.status_code == 200, (role, response.text)


def test_without_auth_no_token_is_needed(open_api: AsgiClient) -> None:
    response = open_api.post("/v1/deployments/bad/predict", json={"rows": [GOOD]})
    assert response.status_code == 200, response.text
    assert open_api.get("/v1/deployments").status_code == 200


def test_declared_body_over_the_limit_is_refused_before_reading(open_api: AsgiClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"rows": []}'

    response = open_api.post("/v1/deployments/bad/predict", content=body(), headers={"Content-Length": "50000000"})
    assert_error(response, 413, "too_large", ("50000000",))


def test_streamed_body_over_the_limit_is_refused(open_api: AsgiClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 500

    response = open_api.post("/v1/deployments/bad/predict", content=chunks())
    assert_error(response, 413, "too_large", ("2000",))


def test_a_worker_that_has_not_started_answers_429_with_retry_after() -> None:
    api = AsgiClient(build_app(ContextRef()))
    responses = [api.get("/v1/deployments"), api.get("/readyz"), api.post("/v1/deployments/bad/predict", json={"rows": [GOOD]})]
    for response in responses:
        assert_error(response, 429, "overloaded")
        assert response.headers["retry-after"] == "1"


def test_health_readiness_and_metrics(api: AsgiClient, serve_template: Template) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz", headers=bearer(serve_template.tokens, "viewer"))
    assert ready.status_code == 200
    body = ready.json()
    assert {k: body[k] for k in ("status", "deployments", "problems")} == {"status": "ready", "deployments": ["bad", "fs"], "problems": {}}
    metrics = api.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE mlbox_prediction_log_backlog gauge" in metrics.text


# OpenAPI ----------------------------------------------------------------------------------------


def app_operations(deployments: list[str]) -> set[tuple[str, str]]:
    """(path, method) of every route of the app, with `{action}` expanded to the management actions and the
    predict route (the dispatcher's, not the router's) once per deployment."""
    from mlbox.api.manage import DEPLOY_CHANGES, JOB_CHANGES, MODEL_CHANGES

    changes = {"deployments": DEPLOY_CHANGES, "jobs": JOB_CHANGES, "models": MODEL_CHANGES}  # the console's {change}
    out = {(f"/v1/deployments/{d}/predict", "post") for d in deployments}
    for route in build_app(ContextRef()).routes:
        assert isinstance(route, Route)
        path = route.path.replace("{id:int}", "{id}")  # the document names the parameter, the router its converter
        if "{action" in path:
            paths = [path.replace("{action:str}", a) for a in MANAGE_ACTIONS]
        elif "{change}" in path:
            paths = [path.replace("{change}", c) for c in changes[path.split("/")[3]]]
        else:
            paths = [path]
        out |= {(p, m.lower()) for p in paths for m in (route.methods or ()) if m != "HEAD"}
    return out


def test_predict_is_registered_once_in_the_one_dispatcher() -> None:
    app = build_app(ContextRef())
    assert isinstance(app, Api) and app.lifespan is app.starlette
    assert not [r for r in app.routes if isinstance(r, Route) and r.path.endswith("/predict")]


def test_openapi_documents_exactly_the_routes(api: AsgiClient, ctx: ServeContext, tokens: dict[str, str]) -> None:
    doc = api.get("/openapi.json", headers=bearer(tokens, "viewer")).json()
    assert doc == openapi_document(api_facts(ctx))
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == app_operations(["bad", "fs"])


def test_openapi_needs_a_token_that_may_read(api: AsgiClient, tokens: dict[str, str]) -> None:
    for path in ("/openapi.json", "/schema.json"):
        assert_error(api.get(path), 401, "unauthenticated")
        assert api.get(path, headers=bearer(tokens, "service")).status_code == 200


def test_openapi_predict_schema_is_the_models_signature(api: AsgiClient, tokens: dict[str, str]) -> None:
    doc = api.get("/openapi.json", headers=bearer(tokens, "viewer")).json()
    plain = doc["paths"]["/v1/deployments/bad/predict"]["post"]
    body = plain["requestBody"]["content"]["application/json"]["schema"]
    rows = body["properties"]["rows"]
    assert (body["required"], body["additionalProperties"]) == (["rows"], False)  # not from the store: rows only
    assert (rows["minItems"], rows["maxItems"]) == (1, MAX_ROWS)
    row = rows["items"]
    assert row["additionalProperties"] is False and set(row["required"]) == set(GOOD)
    assert row["properties"]["segment"] == {"type": "string", "enum": ["a", "b", "c"]}
    assert row["properties"]["x0"]["type"] == "number" and row["properties"]["customer_id"]["type"] == "number"
    answer = plain["responses"]["200"]["content"]["application/json"]["schema"]
    per_row = answer["properties"]["predictions"]["items"]
    assert set(per_row["required"]) == {"0", "1"} and per_row["additionalProperties"] is False
    fs = doc["paths"]["/v1/deployments/fs/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    rows_form, entities_form = fs["oneOf"]
    assert entities_form["properties"]["entities"]["items"]["required"] == ["customer_id"]
    assert entities_form["properties"]["entities"]["items"]["properties"]["customer_id"]["type"] == "integer"
    assert "age" in rows_form["properties"]["rows"]["items"]["properties"]
    name = doc["paths"]["/v1/deployments/{name}"]["get"]["parameters"][0]
    assert name["schema"]["pattern"] == NAME_PATTERN.pattern
    allow = plain["responses"]["405"]["headers"]["Allow"]
    assert allow["required"] is True


def test_bentoml_schema_has_one_route_per_deployment_to_its_predict_path(api: AsgiClient, tokens: dict[str, str]) -> None:
    schema = api.get("/schema.json", headers=bearer(tokens, "service")).json()
    assert (schema["name"], schema["type"]) == ("mlbox", "service")
    routes = {r["name"]: r for r in schema["routes"]}
    assert set(routes) == {"bad", "fs"}
    assert routes["bad"]["route"] == "/v1/deployments/bad/predict" and routes["bad"]["is_task"] is False
    assert set(routes["bad"]["input"]["properties"]) == {"rows"}
    assert set(routes["fs"]["input"]["properties"]) == {"rows", "entities"}
    assert routes["bad"]["output"]["required"] == ["predictions", "model", "variant", "request_id"]


def test_405_names_the_allowed_methods(api: AsgiClient, tokens: dict[str, str]) -> None:
    for method, path, allowed in [("GET", "/v1/deployments/bad/predict", {"POST"}),
                                  ("DELETE", "/v1/deployments/bad", {"GET", "HEAD"}),
                                  ("PUT", "/v1/features/push", {"POST"})]:  # fmt: skip
        response = api.request(method, path, headers=bearer(tokens, "admin"))
        assert_error(response, 405, "method_not_allowed", (method,))
        assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


def test_openapi_error_schema_is_the_envelope() -> None:
    error = openapi_document()["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    inner = error["properties"]["error"]
    assert set(inner["properties"]) == {"status", "code", "message", "hint"}
    assert set(inner["required"]) <= set(inner["properties"])


@pytest.mark.parametrize("case", [c for c in CASES if c.doc], ids=[c.id for c in CASES if c.doc])
def test_each_error_status_is_documented_for_its_route(case: Case, ctx: ServeContext) -> None:
    assert case.doc is not None
    paths = openapi_document(api_facts(ctx))["paths"]
    responses = paths[case.doc.replace("{name}/predict", "bad/predict")][case.method.lower()]["responses"]
    assert str(case.status) in responses, f"{case.method} {case.doc} does not document {case.status}"
    assert responses[str(case.status)]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_every_documented_error_uses_the_envelope(ctx: ServeContext) -> None:
    for path, ops in openapi_document(api_facts(ctx))["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if int(status) >= 400 and status != "503":
                    assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}, (
                        method, path, status)  # fmt: skip


def test_every_documented_operation_exists_and_documents_its_errors(api: AsgiClient, tokens: dict[str, str]) -> None:
    check_documented_operations(api, tokens)


# features push ------------------------------------------------------------------------------------


def test_push_needs_features_write(api: AsgiClient, tokens: dict[str, str]) -> None:
    body = {"view": "usage", "rows": [{"customer_id": 1}]}
    assert_error(api.post("/v1/features/push", json=body), 401, "unauthenticated")
    assert_error(api.post("/v1/features/push", json=body, headers=bearer(tokens, "service")), 403, "forbidden")


@pytest.mark.parametrize(
    "body, status, mentions",
    [
        ([1, 2], 400, ()),
        ({"view": "usage"}, 422, ("rows",)),
        ({"view": "usage", "rows": [], "extra": 1}, 422, ("extra",)),
        ({"view": 3, "rows": [{"customer_id": 1}]}, 422, ("view",)),
        ({"view": "usage", "rows": []}, 422, ("rows",)),
        ({"view": "usage", "rows": [1]}, 422, ("rows",)),
        ({"view": "usage", "rows": [{"customer_id": 1}] * (MAX_ROWS + 1)}, 413, (str(MAX_ROWS),)),
    ],
)
def test_push_refuses_bad_bodies(api: AsgiClient, tokens: dict[str, str], body: Any, status: int, mentions: tuple[str, ...]) -> None:
    response = api.post("/v1/features/push", json=body, headers=bearer(tokens, "data-scientist"))
    assert_error(response, status, None, mentions)


# BentoML's lifespan through the one dispatcher ------------------------------------------------------

FAST_PATH_SCRIPT = r"""
import asyncio, json
import httpx
from mlbox.api import service

app = service.MlboxService.to_asgi()
seen = []

def recorder(tag):
    async def asgi(scope, receive, send):
        seen.append([tag, scope["type"], scope["path"]])
    return asgi

dispatch = service.APP.around(recorder("bentoml"))
dispatch.starlette = recorder("router")
dispatch.predict.handle = lambda name, scope, receive, send: recorder("predict:" + name)(scope, receive, send)

async def main():
    for path in ["/v1/deployments/x/predict", "/v1/anything", "/metrics", "/openapi.json", "/schema.json", "/healthz",
                 "/", "/docs", "/v2/x"]:
        await dispatch({"type": "http", "method": "POST" if path.endswith("predict") else "GET", "path": path}, None, None)
    await dispatch({"type": "websocket", "path": "/v1/anything"}, None, None)
    await dispatch({"type": "lifespan", "path": "/v1/x"}, None, None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get("/v1/deployments")

r = asyncio.run(main())
print(json.dumps({"app": type(app).__name__, "shares_routes": app.starlette is service.APP.starlette,
                  "lifespan_is_bentos": app.lifespan is not service.APP.starlette and app.lifespan is not app, "routes": seen,
                  "status": r.status_code, "body": r.json(), "retry_after": r.headers.get("retry-after")}))
"""


def test_bentoml_service_serves_through_the_one_dispatcher(app_home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FAST_PATH_SCRIPT], env=subprocess_env(app_home), cwd=app_home,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["app"] == "Api" and out["shares_routes"] is True
    assert out["lifespan_is_bentos"] is True  # BentoML's own app keeps the lifespan
    http = [(tag, p) for tag, kind, p in out["routes"] if kind == "http"]
    assert http[0] == ("predict:x", "/v1/deployments/x/predict")
    # every other HTTP path is mlbox's router (unknown ones get its JSON envelope; BentoML's web UI is not served)
    assert all(tag == "router" for tag, _ in http[1:]) and len(http) == 9
    assert ["bentoml", "websocket", "/v1/anything"] in out["routes"]
    assert ["bentoml", "lifespan", "/v1/x"] in out["routes"]
    # through the real to_asgi() app, /v1 reaches mlbox's app directly: no worker context yet, so mlbox's 429
    assert out["status"] == 429 and out["retry_after"] == "1"
    assert out["body"]["error"]["code"] == "overloaded"


@pytest.mark.parametrize(
    "change, field",
    [({"plan": {}}, "plan"), ({"monthly_charges": False}, "monthly_charges"), ({"age": 2**63}, "age"), ({"age": 1.5}, "age"),
     ({"customer_id": True}, "customer_id"), ({"updated_at": 5}, "updated_at")],
)  # fmt: skip
def test_push_refuses_json_values_of_the_wrong_type(api: AsgiClient, tokens: dict[str, str], change: dict[str, Any], field: str) -> None:
    row = {**PROFILE, **change}
    response = api.post("/v1/features/push", json={"view": "customer_profile", "rows": [row]}, headers=bearer(tokens, "data-scientist"))
    assert_error(response, 422, "invalid", ("rows[0]", field))


def test_push_writes_the_rows_online_at_once(api: AsgiClient, tokens: dict[str, str]) -> None:
    row = {**PROFILE, "customer_id": 990001, "age": 41, "updated_at": "2026-11-30T10:00:00Z"}
    body = {"view": "customer_profile", "rows": [row]}
    response = api.post("/v1/features/push", json=body, headers=bearer(tokens, "data-scientist"))
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == 1 and response.json()["view"] == "customer_profile@1"
    online = api.post("/v1/features/online", json={"features": ["customer_profile:age"], "entities": [{"customer_id": 990001}]},
                      headers=bearer(tokens, "service"))  # fmt: skip
    assert online.status_code == 200, online.text
    assert online.json()["features"]["age"] == [41]
