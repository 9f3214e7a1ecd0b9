"""Token rules at every use: the effective role is the lower of the token's and its user's current role,
a disabled user's tokens fail, and revocation, expiry, disabling and demotion reach a running server
within 1 s (meta.db's auth revision, not a blind cache) — in-process and on a real `mlbox serve`.
Authorization is parsed the same way on the raw predict route and the Starlette routes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlbox import clock
from mlbox.api.app import build_app
from mlbox.api.context import AUTH_RECHECK_SECONDS, ServeContext, bearer_token
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import AuthError, PermissionDenied, UsageError
from mlbox.security.roles import PERMISSIONS, lower_role
from mlbox.types import ROLES

from ..conftest import OS_USER
from ..serve.conftest import running_server

PREDICT = "/v1/deployments/nope/predict"  # auth comes before the deployment lookup: a valid token gets 404
LIST = "/v1/deployments"
ROWS = {"rows": [{"x": 1}]}


def within(seconds: float, condition: Any, what: str) -> float:
    """Poll `condition` until true; fail unless that happens within `seconds`. Returns the time it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def people(box: Box) -> dict[str, str]:
    """Users bob (ml-engineer), carol (data-scientist) and one never-expiring token each; also the admin's."""
    box.identity.add_user(OS_USER, "bob", "ml-engineer")
    box.identity.add_user(OS_USER, "carol", "data-scientist")
    return {
        "admin": box.identity.create_token(OS_USER, OS_USER, never_expires=True)[1],
        "bob": box.identity.create_token(OS_USER, "bob", never_expires=True)[1],
        "carol": box.identity.create_token(OS_USER, "carol", never_expires=True)[1],
    }


# the role rule --------------------------------------------------------------------------------


@pytest.mark.parametrize("a", ROLES)
@pytest.mark.parametrize("b", ROLES)
def test_lower_role_never_grants_more_than_either(a: str, b: str) -> None:
    low = lower_role(a, b)  # type: ignore[arg-type]
    assert PERMISSIONS[low] <= PERMISSIONS[a] and PERMISSIONS[low] <= PERMISSIONS[b]  # type: ignore[index]
    assert low in (a, b)  # the table is a chain: one of the two always includes the other
    assert lower_role(a, a) == a  # type: ignore[arg-type]


def test_demoted_users_tokens_act_at_the_new_role(box: Box, people: dict[str, str]) -> None:
    assert box.identity.authenticate(people["bob"]).role == "ml-engineer"
    box.identity.set_role(OS_USER, "bob", "viewer")
    assert box.identity.authenticate(people["bob"]).role == "viewer"
    # promoting again restores the token's own role, never more
    box.identity.set_role(OS_USER, "bob", "admin")
    assert box.identity.authenticate(people["bob"]).role == "ml-engineer"


def test_narrow_token_stays_narrow(box: Box, people: dict[str, str]) -> None:
    _, service = box.identity.create_token(OS_USER, "bob", role="service")
    assert box.identity.authenticate(service).role == "service"
    box.identity.set_role(OS_USER, "bob", "data-scientist")
    assert box.identity.authenticate(service).role == "service"


def test_disabled_users_token_fails_even_if_not_revoked(box: Box, people: dict[str, str]) -> None:
    # a user disabled by any path (here a direct edit that revokes nothing) loses every token
    box.db.execute("UPDATE users SET disabled_at = ? WHERE name = 'carol'", (clock.iso(),))
    with pytest.raises(AuthError) as info:
        box.identity.authenticate(people["carol"])
    assert "disabled" in info.value.message and info.value.status == 401


def test_revision_moves_with_every_auth_change_and_not_with_use(box: Box, people: dict[str, str]) -> None:
    ident = box.identity
    seen = [ident.revision()]

    def moved() -> None:
        now = ident.revision()
        assert now > seen[-1], "auth revision did not move"
        seen.append(now)

    info, token = ident.create_token(OS_USER, "bob")
    moved()
    ident.authenticate(token)  # touches last_used_at: not an auth change
    assert ident.revision() == seen[-1]
    ident.revoke_token(OS_USER, info.id)
    moved()
    ident.set_role(OS_USER, "bob", "viewer")
    moved()
    ident.disable_user(OS_USER, "carol")
    moved()
    ident.add_user(OS_USER, "dan", "viewer")
    moved()


# the worker's cache, in-process -----------------------------------------------------------------


@pytest.fixture
def ctx(box: Box, people: dict[str, str]) -> Iterator[ServeContext]:
    c = ServeContext(load_settings(box.paths.home, environ={}))
    try:
        yield c
    finally:
        c.close()


def header(token: str) -> str:
    return f"Bearer {token}"


def refused(ctx: ServeContext, token: str, action: str, error: type[Exception] = AuthError) -> bool:
    try:
        ctx.authenticate(header(token), action)
    except error:
        return True
    return False


def test_revocation_reaches_a_warm_cache_within_1s(box: Box, ctx: ServeContext, people: dict[str, str]) -> None:
    assert ctx.authenticate(header(people["bob"]), "deploy.manage").name == "bob"  # cached now
    token_id = people["bob"].split("_")[1]
    box.identity.revoke_token(OS_USER, token_id)
    took = within(1.0, lambda: refused(ctx, people["bob"], "read"), "refusing a revoked token")
    assert took <= AUTH_RECHECK_SECONDS + 0.2


def test_disable_reaches_a_warm_cache_within_1s(box: Box, ctx: ServeContext, people: dict[str, str]) -> None:
    ctx.authenticate(header(people["carol"]), "read")
    box.identity.disable_user(OS_USER, "carol")
    within(1.0, lambda: refused(ctx, people["carol"], "read"), "refusing a disabled user's token")


def test_demotion_reaches_a_warm_cache_within_1s(box: Box, ctx: ServeContext, people: dict[str, str]) -> None:
    assert ctx.authenticate(header(people["bob"]), "deploy.manage").role == "ml-engineer"
    box.identity.set_role(OS_USER, "bob", "viewer")
    within(1.0, lambda: refused(ctx, people["bob"], "deploy.manage", PermissionDenied), "a 403 for the demoted user")
    assert ctx.authenticate(header(people["bob"]), "read").role == "viewer"


def test_expiry_is_checked_at_each_use_even_when_cached(
    box: Box, ctx: ServeContext, people: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = box.identity.create_token(OS_USER, "bob", expires_in_s=60)
    ctx.authenticate(header(token), "read")
    ctx.authenticate(header(token), "read")  # served from the cache
    later = clock.now() + timedelta(seconds=61)
    monkeypatch.setattr(clock, "now", lambda: later)
    with pytest.raises(AuthError) as info:  # at once: no revision moved, the clock did
        ctx.authenticate(header(token), "read")
    assert "expired" in info.value.message
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]


# Authorization parsing ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(scheme: str) -> None:
    assert bearer_token(f"{scheme} mlbx_x") == "mlbx_x"
    assert bearer_token([f"  {scheme}   mlbx_x  "]) == "mlbx_x"


@pytest.mark.parametrize("value, error, www", [
    (None, AuthError, 'Bearer realm="mlbox"'),
    ("", AuthError, 'Bearer realm="mlbox"'),
    ("Basic dXNlcjpwYXNz", AuthError, 'Bearer realm="mlbox"'),
    ("Bearer", AuthError, 'Bearer realm="mlbox", error="invalid_token"'),
    (["Bearer a", "Bearer b"], UsageError, 'Bearer realm="mlbox", error="invalid_request"'),
    (["Bearer a", "Bearer a"], UsageError, 'Bearer realm="mlbox", error="invalid_request"'),
])  # fmt: skip
def test_bad_authorization_values(value: Any, error: type[Exception], www: str) -> None:
    with pytest.raises(error) as info:
        bearer_token(value)
    assert info.value.headers == {"WWW-Authenticate": www}  # type: ignore[attr-defined]


def call(app: Any, method: str, path: str, headers: list[tuple[str, str]]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            kw: dict[str, Any] = {"json": ROWS} if method == "POST" else {}
            return await client.request(method, path, headers=headers, **kw)

    return asyncio.run(go())


ROUTES = [("POST", PREDICT, 404), ("GET", LIST, 200)]  # the raw ASGI route and a Starlette one


def check_parsing(send: Any, token: str) -> None:
    """The same answers on both kinds of route: `send(method, path, headers) -> httpx.Response`."""
    for method, path, ok in ROUTES:
        for scheme in ("bearer", "BEARER", "Bearer"):
            r = send(method, path, [("Authorization", f"{scheme} {token}")])
            assert r.status_code == ok, (path, scheme, r.text)
        r = send(method, path, [])
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="mlbox"', (path, r.headers)
        r = send(method, path, [("Authorization", "Bearer mlbx_000000000000_" + "x" * 43)])
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == 'Bearer realm="mlbox", error="invalid_token"', (path, r.headers)
        r = send(method, path, [("Authorization", f"Bearer {token}"), ("Authorization", "Bearer mlbx_bogus")])
        assert r.status_code == 400 and "Authorization headers" in r.json()["error"]["message"], (path, r.text)
        r = send(method, path, [("Authorization", "Bearer mlbx_bogus"), ("Authorization", f"Bearer {token}")])
        assert r.status_code == 400, (path, r.text)  # whichever order: no route picks one


def test_authorization_parsing_in_process(ctx: ServeContext, people: dict[str, str]) -> None:
    app = build_app(ctx)
    check_parsing(lambda m, p, h: call(app, m, p, h), people["admin"])


# a real `mlbox serve` --------------------------------------------------------------------------


def test_running_server_follows_auth_changes_within_1s(box: Box, people: dict[str, str]) -> None:
    home = box.paths.home
    assert not box.db.conn.in_transaction
    with running_server(home) as server:
        client = server.client
        # made once the server answers (its start can take seconds on a loaded machine), so it is valid when first used
        _, expiring = box.identity.create_token(OS_USER, "bob", expires_in_s=6)
        made = time.monotonic()

        def status(token: str, method: str = "GET", path: str = LIST) -> int:
            kw: dict[str, Any] = {"json": ROWS} if method == "POST" else {}
            return client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw).status_code

        def change(fn: Any) -> None:
            fn(box.identity)  # another process's connection to the same meta.db, as the CLI's would be

        def send(method: str, path: str, headers: list[tuple[str, str]]) -> httpx.Response:
            return client.request(method, path, headers=headers, json=ROWS if method == "POST" else None)

        check_parsing(send, people["admin"])
        assert status(people["bob"]) == 200 and status(people["bob"], "POST", PREDICT) == 404  # warm
        assert status(people["carol"]) == 200 and status(expiring) == 200
        # revoke
        change(lambda i: i.revoke_token(OS_USER, people["bob"].split("_")[1]))
        within(1.0, lambda: status(people["bob"]) == 401 and status(people["bob"], "POST", PREDICT) == 401, "revocation")
        # disable
        change(lambda i: i.disable_user(OS_USER, "carol"))
        within(1.0, lambda: status(people["carol"], "POST", PREDICT) == 401, "disabling")
        # demote: the admin's token becomes a viewer's, so predict is a 403
        change(lambda i: i.add_user(OS_USER, "erin", "admin"))
        change(lambda i: i.set_role(OS_USER, OS_USER, "viewer"))
        within(1.0, lambda: status(people["admin"], "POST", PREDICT) == 403, "demotion")
        assert status(people["admin"]) == 200  # still a viewer
        # expiry: the token was cached while valid; it fails once its time is up, with no change in meta.db
        time.sleep(max(0.0, 6.0 - (time.monotonic() - made)))
        within(1.0, lambda: status(expiring) == 401, "expiry")


# audited refusals and logins ------------------------------------------------------------------


def _entries(box: Box, action: str) -> list[Any]:
    return [e for e in box.audit.entries(limit=10_000) if e.action == action]


def test_http_refusals_and_token_logins_are_audited_and_rate_limited(box: Box, ctx: ServeContext, people: dict[str, str]) -> None:
    from mlbox.errors import PermissionDenied

    for _ in range(5):  # a data scientist tries to manage deployments, again and again
        assert refused(ctx, people["carol"], "deploy.manage", PermissionDenied)
    denied = _entries(box, "auth.denied")
    assert [(e.actor, e.target) for e in denied] == [("carol", "deploy.manage")]  # one entry, not five
    assert denied[0].details["via"] == "http" and denied[0].details["role"] == "data-scientist"
    ctx.authenticate(header(people["bob"]), "read")
    ctx.authenticate(header(people["bob"]), "read")
    logins = [e for e in _entries(box, "auth.token_login") if e.actor == "bob"]
    assert len(logins) == 1 and logins[0].details == {"via": "http"}
    assert box.audit.verify().ok


def test_cli_refusals_are_audited_once_a_minute(box: Box, people: dict[str, str], cli_run: Any) -> None:
    for _ in range(3):
        r = cli_run("--home", str(box.paths.home), "deploy", "create", "x", "--model", "m:1", env={"MLBOX_TOKEN": people["carol"]})
        assert r.exit_code == 5
    denied = _entries(box, "auth.denied")
    assert [(e.actor, e.target, e.details["via"]) for e in denied] == [("carol", "deploy.manage", "cli")]
