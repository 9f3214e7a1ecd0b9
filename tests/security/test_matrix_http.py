"""The route x role matrix, generated from the running app: every HTTP route (the router's, plus the
predict route `Api` dispatches itself) is declared in mlbox/api/permissions.py, and walked with every
role through a real in-process app with auth on: a role lacking the route's action gets a 403 envelope
naming it, the others get past auth (a 404 for the dummy deployment is fine), no token is a 401 with
WWW-Authenticate, and the public routes answer without a token and show no token, user or box path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlbox.api.app import Api, build_app
from mlbox.api.context import ServeContext
from mlbox.api.permissions import MANAGE_ACTIONS, ROUTES, Public
from mlbox.api.predict import PREFIX, SUFFIX, predict_name
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.security.roles import ACTIONS, PERMISSIONS
from mlbox.types import ROLES

from ..conftest import OS_USER

PREDICT = ("POST", f"{PREFIX}{{name}}{SUFFIX}")
BODIES: dict[str, Any] = {  # well-formed enough to get past parsing to the lookup of the dummy names
    "/v1/features/online": {"features": ["x:y"], "entities": [{"k": 1}]},
    "/v1/features/push": {"view": "x", "rows": [{"k": 1}]},
    PREDICT[1]: {"rows": [{"x": 1}]},
    "canary": {"model": "x:1"},
    "shadow": {"model": "x:1"},
    "promote": {},
    "rollback": {},
    "/v1/console/deployments/{name}/{change}": {"weight": 50},
    "/v1/console/deployments/{name}/check": {},
    "/v1/console/jobs/train": {},
    "/v1/console/jobs/{id:int}/{change}": {},
    "/v1/console/models/{ref}/{change}": {"alias": "staging"},
}
CONSOLE_CHANGES = {  # the changes each console POST route takes (api/manage.py)
    "/v1/console/deployments/{name}/{change}": ("weight", "rollback", "shadow"),
    "/v1/console/jobs/{id:int}/{change}": ("cancel", "retry"),
    "/v1/console/models/{ref}/{change}": ("promote", "archive"),
}


def served_routes(app: Api) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers: the router's (HEAD is GET's) and the raw predict route."""
    out = {(m, r.path) for r in app.routes for m in (getattr(r, "methods", None) or ()) if m != "HEAD"}
    return out | {PREDICT}


def concrete(method: str, path: str) -> list[tuple[str, Any]]:
    """The URLs (with their JSON bodies) that exercise one declared route: `{name}` is a dummy deployment."""
    if path == "/v1/deployments/{name}/{action:str}":
        return [(f"/v1/deployments/x/{a}", BODIES[a]) for a in MANAGE_ACTIONS]
    url = path.replace("{name}", "x").replace("{id:int}", "999").replace("{id}", "nope").replace("{ref}", "x:1")
    url = url.replace("{view}", "x")
    body = BODIES.get(path) if method == "POST" else None
    if path in CONSOLE_CHANGES:  # each change, its body only where it needs more than a reason
        return [(url.replace("{change}", c), body if c in ("weight", "promote") else {}) for c in CONSOLE_CHANGES[path]]
    return [(url, body)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One box with a user and token per role, and the app over it with auth on."""
    home = tmp_path_factory.mktemp("matrix_http") / "box"
    tokens: dict[str, str] = {}
    with Box.create(load_settings(home, environ={}), OS_USER) as box:
        for role in ROLES:
            name = "as_" + role.replace("-", "_")
            box.identity.add_user(OS_USER, name, role)
            tokens[role] = box.identity.create_token(OS_USER, name, never_expires=True)[1]
    ctx = ServeContext(load_settings(home, environ={}))
    assert ctx.auth_required
    try:
        yield {"app": build_app(ctx), "tokens": tokens, "home": home}
    finally:
        ctx.close()


def send(app: Api, calls: list[tuple[str, str, Any, dict[str, str]]]) -> list[httpx.Response]:
    """Send (method, url, json body, headers) requests in order through one in-process client."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            out = []
            for method, url, body, headers in calls:
                kw = {"json": body} if method == "POST" else {}
                out.append(await client.request(method, url, headers=headers, **kw))
            return out

    return asyncio.run(go())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# the table matches the app ------------------------------------------------------------------------


def test_every_route_is_declared_and_every_declaration_exists(world: dict[str, Any]) -> None:
    served = served_routes(world["app"])
    undeclared = sorted(served - set(ROUTES))
    gone = sorted(set(ROUTES) - served)
    assert not undeclared, f"routes without a declared permission in mlbox/api/permissions.py: {undeclared}"
    assert not gone, f"mlbox/api/permissions.py declares routes the app no longer serves: {gone}"
    for need in ROUTES.values():
        assert isinstance(need, Public) and need.reason or need in ACTIONS, need


def test_the_predict_route_is_the_dispatchers() -> None:
    """The one route outside the router: declared by hand above, so check the dispatcher really takes it."""
    assert predict_name({"method": "POST", "path": "/v1/deployments/x/predict"}) == "x"
    assert predict_name({"method": "GET", "path": "/v1/deployments/x/predict"}) is None


# the walk -----------------------------------------------------------------------------------------

PROTECTED = sorted(k for k, v in ROUTES.items() if not isinstance(v, Public))
PUBLIC = sorted(k for k, v in ROUTES.items() if isinstance(v, Public))


@pytest.mark.parametrize("method, path", PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_route_by_role(world: dict[str, Any], method: str, path: str) -> None:
    action = ROUTES[(method, path)]
    assert isinstance(action, str)
    urls = concrete(method, path)
    calls = [(method, url, body, bearer(world["tokens"][role])) for role in ROLES for url, body in urls]
    answers = iter(send(world["app"], calls))
    for role in ROLES:
        for url, _ in urls:
            r = next(answers)
            what = f"{method} {url} as {role}: {r.status_code} {r.text}"
            if action in PERMISSIONS[role]:
                assert r.status_code not in (401, 403), what
                assert r.status_code < 500, what
            else:
                assert r.status_code == 403, what
                error = r.json()["error"]
                assert (error["status"], error["code"]) == (403, "forbidden"), what
                assert f"needs permission '{action}'" in error["hint"], what


@pytest.mark.parametrize("method, path", PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_no_token_is_a_401_with_www_authenticate(world: dict[str, Any], method: str, path: str) -> None:
    urls = concrete(method, path)
    for (url, _), r in zip(urls, send(world["app"], [(method, url, body, {}) for url, body in urls]), strict=True):
        assert r.status_code == 401, (url, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer realm="), (url, r.headers)
        assert r.json()["error"]["code"] == "unauthenticated", r.text


@pytest.mark.parametrize("method, path", PUBLIC, ids=[f"{m} {p}" for m, p in PUBLIC])
def test_public_routes_answer_without_a_token_and_reveal_no_secret(world: dict[str, Any], method: str, path: str) -> None:
    # an authenticated call first, so /metrics has counted something for it to (not) reveal
    send(world["app"], [("GET", "/v1/deployments", None, bearer(world["tokens"]["admin"]))])
    [r] = send(world["app"], [(method, path, None, {})])
    assert r.status_code not in (401, 403), r.text
    assert r.status_code in (200, 503), r.text  # /readyz may say "not ready": an answer, not a refusal
    secrets = [*world["tokens"].values(), *(t.split("_")[1] for t in world["tokens"].values()), str(world["home"]), OS_USER]
    secrets += ["as_" + role.replace("-", "_") for role in ROLES]
    for secret in secrets:
        assert secret not in r.text, f"{path} reveals {secret!r}"
