"""mlbox's Starlette app in-process through httpx.ASGITransport: the error envelope for every bad request,
the OpenAPI document against the routes, auth switched off, body limits, and BentoML's fast path.
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

from mlbox.api.app import build_app
from mlbox.api.predict import ContextRef
from mlbox.api.context import ServeContext
from mlbox.api.openapi import openapi_document
from mlbox.config import load_settings
from mlbox.flavors import onnx as onnx_files
from mlbox.flavors.signature import Signature

from ..conftest import OS_USER
from ._cases import CASES, GOOD, IDS, MAX_ROWS, Case
from .conftest import (
    AsgiClient, Template, assert_error, check_documented_operations, copy_box, open_box, sample_rows, subprocess_env, wait_for,
)  # fmt: skip

MANAGE_ACTIONS = ("canary", "shadow", "promote", "rollback")


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


def test_a_dead_sidecar_shows_in_readiness_and_is_started_again(app_home: Path) -> None:
    ctx = make_context(app_home)
    try:
        api = AsgiClient(build_app(ctx))
        assert api.get("/readyz").status_code == 200
        proc = ctx.offload._proc
        assert proc is not None
        proc.kill()
        proc.wait(10)
        ready = api.get("/readyz")
        assert ready.status_code == 503 and "sidecar" in ready.json()["problems"]
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


def test_health_readiness_and_metrics(api: AsgiClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "deployments": ["bad", "fs"], "problems": {}}
    metrics = api.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE mlbox_prediction_log_backlog gauge" in metrics.text


# OpenAPI ----------------------------------------------------------------------------------------


def app_operations() -> set[tuple[str, str]]:
    """(path, method) of every route of the app, with `{action}` expanded to the management actions."""
    out: set[tuple[str, str]] = set()
    for route in build_app(ContextRef()).routes:
        assert isinstance(route, Route)
        paths = [route.path.replace("{action:str}", a) for a in MANAGE_ACTIONS] if "{action" in route.path else [route.path]
        out |= {(p, m.lower()) for p in paths for m in (route.methods or ()) if m != "HEAD"}
    return out


def test_openapi_documents_exactly_the_routes(api: AsgiClient) -> None:
    doc = api.get("/openapi.json").json()
    assert doc == openapi_document()
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == app_operations()


def test_openapi_error_schema_is_the_envelope() -> None:
    error = openapi_document()["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    inner = error["properties"]["error"]
    assert set(inner["properties"]) == {"status", "code", "message", "hint"}
    assert set(inner["required"]) <= set(inner["properties"])


@pytest.mark.parametrize("case", [c for c in CASES if c.doc], ids=[c.id for c in CASES if c.doc])
def test_each_error_status_is_documented_for_its_route(case: Case) -> None:
    responses = openapi_document()["paths"][case.doc][case.method.lower()]["responses"]
    assert str(case.status) in responses, f"{case.method} {case.doc} does not document {case.status}"
    assert responses[str(case.status)]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_every_documented_operation_exists_and_documents_its_errors(api: AsgiClient, tokens: dict[str, str]) -> None:
    check_documented_operations(api, tokens)


# BentoML's fast path ------------------------------------------------------------------------------

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

dispatch = service.FastPathDispatcher(recorder("bentoml"), recorder("mlbox"))

async def main():
    for path in ["/v1/deployments/x/predict", "/v1/anything", "/metrics", "/openapi.json", "/healthz", "/readyz",
                 "/", "/docs", "/livez", "/v2/x", "/metricsx"]:
        await dispatch({"type": "http", "path": path}, None, None)
    await dispatch({"type": "websocket", "path": "/v1/anything"}, None, None)
    await dispatch({"type": "lifespan", "path": "/v1/x"}, None, None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get("/v1/deployments")

r = asyncio.run(main())
print(json.dumps({"app": type(app).__name__, "fast_app_is_mlbox": app.fast_app is service.APP,
                  "bento_app": type(app.bento_app).__name__, "routes": seen,
                  "status": r.status_code, "body": r.json(), "retry_after": r.headers.get("retry-after")}))
"""


def test_bentoml_service_wraps_its_app_in_the_fast_path(app_home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FAST_PATH_SCRIPT], env=subprocess_env(app_home), cwd=app_home,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["app"] == "FastPathDispatcher"
    assert out["fast_app_is_mlbox"] is True
    assert out["bento_app"] != "FastPathDispatcher"
    # every HTTP path is mlbox's (unknown ones get its JSON envelope; BentoML's web UI is not served)
    assert all(tag == "mlbox" for tag, kind, _ in out["routes"] if kind == "http")
    assert {p for tag, kind, p in out["routes"] if kind == "http"} >= {"/v1/deployments/x/predict", "/metrics", "/"}
    assert ["bentoml", "websocket", "/v1/anything"] in out["routes"]
    assert ["bentoml", "lifespan", "/v1/x"] in out["routes"]
    # through the real to_asgi() app, /v1 reaches mlbox's app directly: no worker context yet, so mlbox's 429
    assert out["status"] == 429 and out["retry_after"] == "1"
    assert out["body"]["error"]["code"] == "overloaded"
