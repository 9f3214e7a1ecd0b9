"""OIDC access tokens on the serving app, against a JWKS served on loopback by a real HTTP server: a valid
token acts at the role its claims map to; forged, re-keyed, expired, not-yet-valid, wrong-issuer,
wrong-audience, `alg: none` and HS256-with-the-public-key tokens get a 401 that says why; an unknown kid
is refetched (a rotation) but not on every request; a changed JWKS or oidc.yaml stops a cached token;
an unmapped claim is a 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from mlbox.api.app import build_app
from mlbox.api.context import ServeContext
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import SettingsError
from mlbox.security.oidc import looks_like_jwt

from ..conftest import OS_USER
from ..serve.conftest import AsgiClient

ISSUER = "https://idp.example.test/realms/main"
FILE_ISSUER = "https://login.example.org"
AUDIENCE = "mlbox-api"
LIST = "/v1/deployments"
PREDICT = "/v1/deployments/nope/predict"  # a 404 once auth passes: no deployment is needed to tell allowed from refused


class Jwks:
    """A JWKS endpoint on 127.0.0.1 in a thread: `keys` is what it serves, `fetches` how often it was asked."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.fetches += 1
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}),
        "rsa2": RSAKey.generate_key(2048, parameters={"kid": "rsa-2"}),
        "other": RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}),  # same kid, not the issuer's key
        "ec": ECKey.generate_key("P-256", parameters={"kid": "ec-1"}),
    }


@pytest.fixture
def jwks(keys: dict[str, Any]) -> Iterator[Jwks]:
    server = Jwks()
    server.keys = [keys["rsa"].as_dict(private=False)]
    try:
        yield server
    finally:
        server.close()


def write_config(home: Path, jwks: Jwks, keys: dict[str, Any], **extra: Any) -> None:
    (home / "login-jwks.json").write_text(json.dumps({"keys": [keys["ec"].as_dict(private=False)]}))
    issuers = [
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks.url, "algorithms": ["RS256", "ES256"],
         "role_claim": "groups", "roles": {"ml-team": "ml-engineer", "readers": "viewer"}, **extra},
        {"issuer": FILE_ISSUER, "audience": AUDIENCE, "jwks_file": "login-jwks.json", "algorithms": ["ES256"],
         "user_claim": "email", "role_claim": "realm_access.roles", "roles": {"mlbox-admin": "admin"}},
    ]  # fmt: skip
    (home / "oidc.yaml").write_text(yaml.safe_dump({"issuers": issuers}, sort_keys=False))


def make_ctx(home: Path, **environ: str) -> ServeContext:
    return ServeContext(load_settings(home, environ=environ))


@pytest.fixture
def ctx(box: Box, jwks: Jwks, keys: dict[str, Any]) -> Iterator[ServeContext]:
    write_config(box.paths.home, jwks, keys)
    c = make_ctx(box.paths.home, MLBOX_AUTH_OIDC_JWKS_REFRESH_S="0")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def api(ctx: ServeContext) -> AsgiClient:
    return AsgiClient(build_app(ctx))


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "groups": ["ml-team"], "iat": now, "exp": now + 300, **over}


def sign(key: Any, body: dict[str, Any], alg: str = "RS256", kid: str | None = "rsa-1") -> str:
    header: dict[str, Any] = {"alg": alg, **({"kid": kid} if kid else {})}
    return jwt.encode(header, body, key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], body: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT built by hand, as an attacker would: any header, any signature."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}.{b64(signature)}"


def get(api: AsgiClient, token: str, path: str = LIST) -> Any:
    method = "POST" if path.endswith("/predict") else "GET"
    kw: dict[str, Any] = {"json": {"rows": [{"x": 1}]}} if method == "POST" else {}
    return api.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)


def refused(response: Any, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    for word in words:
        assert word in message, message
    return message


def unauthorized(api: AsgiClient, token: str, *words: str) -> str:
    r = get(api, token)
    message = refused(r, 401, *words)
    assert r.headers["www-authenticate"] == 'Bearer realm="mlbox", error="invalid_token"'
    signature = token.split(".")[2]
    assert token not in r.text and (not signature or signature not in r.text)  # the token is never echoed
    return message


# accepted -------------------------------------------------------------------------------------


def test_valid_token_acts_at_its_mapped_role(box: Box, ctx: ServeContext, api: AsgiClient, keys: dict[str, Any]) -> None:
    token = sign(keys["rsa"], claims())
    assert looks_like_jwt(token)
    assert get(api, token).status_code == 200
    assert get(api, token, PREDICT).status_code == 404  # past auth: ml-engineer may predict
    who = ctx.authenticate(f"Bearer {token}", "deploy.manage")
    assert (who.name, who.role, who.via) == ("oidc:idp.example.test:alice", "ml-engineer", "token")
    # the first mapping in the file wins when a token carries several values
    both = sign(keys["rsa"], claims(sub="bo", groups=["readers", "ml-team"]))
    assert ctx.authenticate(f"Bearer {both}", "read").role == "ml-engineer"
    reader = sign(keys["rsa"], claims(sub="rita", groups="readers"))  # a space-separated string claim works too
    assert ctx.authenticate(f"Bearer {reader}", "read").role == "viewer"
    r = api.post("/v1/deployments/x/promote", json={}, headers={"Authorization": f"Bearer {reader}"})
    refused(r, 403, "viewer")
    # logins are audited, once per identity in the window, not once per request
    for _ in range(3):
        assert get(api, token).status_code == 200
    logins = box.db.query("SELECT actor, target FROM audit WHERE action = 'auth.oidc_login' AND actor LIKE '%alice'")
    assert logins == [{"actor": "oidc:idp.example.test:alice", "target": "oidc:idp.example.test"}]


def test_es256_from_a_jwks_file_with_a_nested_role_claim(ctx: ServeContext, api: AsgiClient, keys: dict[str, Any]) -> None:
    body = claims(iss=FILE_ISSUER, email="root@example.org", realm_access={"roles": ["mlbox-admin"]}, groups=None)
    token = sign(keys["ec"], body, "ES256", "ec-1")
    who = ctx.authenticate(f"Bearer {token}", "box.admin")
    assert (who.name, who.role) == ("oidc:login.example.org:root@example.org", "admin")
    # this issuer allows ES256 only: the same claims signed RS256 by the other issuer's key are refused
    unauthorized(api, sign(keys["rsa"], body), "RS256", "not allowed for this issuer")


def test_a_token_without_kid_uses_the_only_key(api: AsgiClient, jwks: Jwks, keys: dict[str, Any]) -> None:
    assert get(api, sign(keys["rsa"], claims(), kid=None)).status_code == 200
    jwks.keys = [keys["rsa"].as_dict(private=False), keys["rsa2"].as_dict(private=False)]
    assert get(api, sign(keys["rsa2"], claims(), kid="rsa-2")).status_code == 200  # the rotation is seen
    # with several keys a kid is needed: a new kid-less token is refused
    unauthorized(api, sign(keys["rsa"], claims(sub="new"), kid=None), "unknown kid")


def test_unsafe_subject_becomes_a_hash(ctx: ServeContext, keys: dict[str, Any]) -> None:
    token = sign(keys["rsa"], claims(sub="eve\x1b[31m'; DROP TABLE users;--"))
    name = ctx.authenticate(f"Bearer {token}", "read").name
    assert name.startswith("oidc:idp.example.test:sha256-") and len(name) == len("oidc:idp.example.test:sha256-") + 32


def test_api_tokens_still_work_beside_oidc(box: Box, api: AsgiClient) -> None:
    _, token = box.identity.create_token(OS_USER, OS_USER)
    assert get(api, token).status_code == 200


# refused --------------------------------------------------------------------------------------


def test_forged_and_foreign_signatures(api: AsgiClient, keys: dict[str, Any]) -> None:
    good = sign(keys["rsa"], claims(groups=["readers"]))
    head, _, signature = good.split(".")
    escalated = f"{head}.{b64(json.dumps(claims(groups=['ml-team'])).encode())}.{signature}"
    unauthorized(api, escalated, "signature is invalid")
    unauthorized(api, sign(keys["other"], claims()), "signature is invalid")  # the issuer's kid, someone else's key


@pytest.mark.parametrize("over, words", [
    ({"exp": int(time.time()) - 120}, ("expired",)),
    ({"nbf": int(time.time()) + 600}, ("not valid yet",)),
    ({"iss": "https://evil.example"}, ("unknown issuer",)),
    ({"iss": ISSUER + "/"}, ("unknown issuer",)),  # exact match only
    ({"aud": "another-api"}, ("another audience",)),
    ({"aud": ["a", "b"]}, ("another audience",)),
    ({"exp": None}, ("exp",)),
])  # fmt: skip
def test_claims_are_checked(api: AsgiClient, keys: dict[str, Any], over: dict[str, Any], words: tuple[str, ...]) -> None:
    body = {k: v for k, v in claims(**over).items() if v is not None}
    unauthorized(api, sign(keys["rsa"], body), *words)


def test_audience_list_containing_ours_is_accepted(api: AsgiClient, keys: dict[str, Any]) -> None:
    assert get(api, sign(keys["rsa"], claims(aud=["other", AUDIENCE]))).status_code == 200


def test_small_clock_skew_is_tolerated(api: AsgiClient, keys: dict[str, Any]) -> None:
    now = int(time.time())
    assert get(api, sign(keys["rsa"], claims(nbf=now + 10, exp=now - 5))).status_code == 200  # leeway 30 s


def test_alg_none_is_refused(api: AsgiClient) -> None:
    for alg in ("none", "None", "NONE"):
        unauthorized(api, hand_made({"alg": alg, "kid": "rsa-1"}, claims()), "algorithm", "not allowed")


def test_hs256_signed_with_the_public_key_is_refused(api: AsgiClient, keys: dict[str, Any]) -> None:
    """Key confusion: an attacker HMACs the token with the issuer's public key, hoping it is used as a secret."""
    from cryptography.hazmat.primitives import serialization

    public = keys["rsa"].public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (public, json.dumps(keys["rsa"].as_dict(private=False)).encode()):
        head = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
        body = b64(json.dumps(claims(groups=["ml-team"])).encode())
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        unauthorized(api, f"{head}.{body}.{b64(mac)}", "HS256", "not allowed")


def test_garbage_that_looks_like_a_jwt(api: AsgiClient) -> None:
    unauthorized(api, "aaaa.bbbb.cccc", "malformed JWT")
    unauthorized(api, hand_made({"alg": "RS256"}, ["not", "an", "object"]), "JSON objects")  # type: ignore[arg-type]


def test_unmapped_claim_is_a_403(api: AsgiClient, keys: dict[str, Any]) -> None:
    for groups in (["marketing"], [], None):
        body = {k: v for k, v in claims(sub="mallory", groups=groups).items() if v is not None}
        message = refused(get(api, sign(keys["rsa"], body)), 403, "oidc:idp.example.test:mallory", "no mlbox role", "groups")
        assert "mapped" in message


def test_no_issuer_configured(box: Box, keys: dict[str, Any]) -> None:
    c = make_ctx(box.paths.home)
    try:
        unauthorized(AsgiClient(build_app(c)), sign(keys["rsa"], claims()), "accepts no OIDC tokens")
    finally:
        c.close()


# keys: rotation, refresh, changes -----------------------------------------------------------------


def test_unknown_kid_then_rotation(api: AsgiClient, jwks: Jwks, keys: dict[str, Any]) -> None:
    token = sign(keys["rsa2"], claims(), kid="rsa-2")
    assert get(api, sign(keys["rsa"], claims())).status_code == 200
    fetched = jwks.fetches
    unauthorized(api, token, "unknown kid")
    assert jwks.fetches == fetched + 1  # an unknown kid made it look again
    jwks.keys = [keys["rsa"].as_dict(private=False), keys["rsa2"].as_dict(private=False)]  # the provider rotates
    assert get(api, token).status_code == 200


def test_unknown_kids_refetch_at_most_once_per_interval(box: Box, jwks: Jwks, keys: dict[str, Any]) -> None:
    write_config(box.paths.home, jwks, keys)
    c = make_ctx(box.paths.home, MLBOX_AUTH_OIDC_JWKS_REFRESH_S="60")
    try:
        api = AsgiClient(build_app(c))
        assert get(api, sign(keys["rsa"], claims())).status_code == 200
        for n in range(5):
            unauthorized(api, sign(keys["rsa2"], claims(sub=f"u{n}"), kid=f"made-up-{n}"), "unknown kid")
        assert jwks.fetches == 1  # a flood of made-up kids does not become a flood of fetches
    finally:
        c.close()


def test_key_removed_from_the_url_stops_cached_tokens_after_max_age(box: Box, jwks: Jwks, keys: dict[str, Any]) -> None:
    write_config(box.paths.home, jwks, keys)
    c = make_ctx(box.paths.home, MLBOX_AUTH_OIDC_JWKS_MAX_AGE_S="0.5", MLBOX_AUTH_OIDC_JWKS_REFRESH_S="60")
    try:
        api = AsgiClient(build_app(c))
        token = sign(keys["rsa"], claims())
        assert get(api, token).status_code == 200 and get(api, token).status_code == 200  # cached
        jwks.keys = [keys["rsa2"].as_dict(private=False)]  # rsa-1 rotated out (say, compromised)
        time.sleep(0.6)
        unauthorized(api, token, "unknown kid")
    finally:
        c.close()


def test_changed_jwks_file_or_oidc_yaml_stops_a_cached_token(box: Box, ctx: ServeContext, api: AsgiClient, keys: dict[str, Any]) -> None:
    home = box.paths.home
    body = claims(iss=FILE_ISSUER, email="root@example.org", realm_access={"roles": ["mlbox-admin"]})
    token = sign(keys["ec"], body, "ES256", "ec-1")
    assert get(api, token).status_code == 200 and get(api, token).status_code == 200
    (home / "login-jwks.json").write_text(json.dumps({"keys": [keys["rsa2"].as_dict(private=False)]}))
    deadline = time.monotonic() + 1.0
    while get(api, token).status_code == 200:
        assert time.monotonic() < deadline, "a token signed by a removed key was still accepted after 1 s"
        time.sleep(0.05)
    # and an oidc.yaml that no longer lists an issuer stops that issuer's cached tokens
    rsa_token = sign(keys["rsa"], claims())
    assert get(api, rsa_token).status_code == 200
    config = yaml.safe_load((home / "oidc.yaml").read_text())
    config["issuers"] = config["issuers"][1:]
    (home / "oidc.yaml").write_text(yaml.safe_dump(config))
    deadline = time.monotonic() + 1.0
    while get(api, rsa_token).status_code == 200:
        assert time.monotonic() < deadline, "a removed issuer's token was still accepted after 1 s"
        time.sleep(0.05)
    unauthorized(api, rsa_token, "unknown issuer")
    # a broken oidc.yaml fails closed
    (home / "oidc.yaml").write_text("issuers: [{issuer: x}]\n")
    time.sleep(0.3)
    unauthorized(api, sign(keys["ec"], body, "ES256", "ec-1"), "configuration is invalid")


def test_unreachable_provider_is_a_clear_401(box: Box, keys: dict[str, Any]) -> None:
    down = Jwks()
    down.close()  # its port is now closed: connections are refused
    write_config(box.paths.home, down, keys)
    c = make_ctx(box.paths.home, MLBOX_AUTH_OIDC_JWKS_REFRESH_S="60")
    try:
        api = AsgiClient(build_app(c))
        started = time.monotonic()
        for _ in range(3):
            unauthorized(api, sign(keys["rsa"], claims()), "keys could not be read")
        assert time.monotonic() - started < 3.0  # refused fast: a connection refused is not waited on
    finally:
        c.close()


# configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("change, words", [
    ({"algorithms": ["HS256"]}, "asymmetric"),
    ({"algorithms": ["none"]}, "asymmetric"),
    ({"jwks_url": "http://idp.example.test/certs"}, "https"),
    ({"jwks_url": "file:///etc/passwd"}, "https"),
    ({"roles": {"ml-team": "wizard"}}, "unknown role"),
    ({"jwks_file": "x.json"}, "exactly one"),
    ({"surprise": 1}, "surprise"),
])  # fmt: skip
def test_bad_configuration_stops_the_worker(
    box: Box, jwks: Jwks, keys: dict[str, Any], change: dict[str, Any], words: str
) -> None:
    write_config(box.paths.home, jwks, keys, **change)
    with pytest.raises(SettingsError) as info:
        make_ctx(box.paths.home)
    assert words in f"{info.value} {info.value.hint}", (str(info.value), info.value.hint)


def test_scopes_from_a_claim(box: Box, jwks: Jwks, keys: dict[str, Any]) -> None:
    write_config(box.paths.home, jwks, keys, scope_claim="scope")
    c = make_ctx(box.paths.home)
    try:
        api = AsgiClient(build_app(c))
        scoped = sign(keys["rsa"], claims(scope="openid profile deployment:nope"))
        assert get(api, scoped, PREDICT).status_code == 404  # in scope: past auth
        refused(get(api, scoped, "/v1/deployments/other/predict"), 403, "deployment 'other'")
        unscoped = sign(keys["rsa"], claims(sub="bob", scope="openid"))
        assert get(api, unscoped, "/v1/deployments/other/predict").status_code == 404
    finally:
        c.close()
