"""Scoped API tokens: a token limited to named deployments and feature views reaches only those, on every
HTTP route kind that names one (predict, deployment read and manage, monitoring, online read, push, the
list and the documents) and on the CLI (`predict`, `features get`, `deploy ...`; any other command refuses a
scoped token); an unscoped token is
unrestricted; scopes are stored in meta.db, listed, move the auth revision, and a scoped token's
revocation reaches a warm server within 1 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlbox.api.app import build_app
from mlbox.api.context import ServeContext
from mlbox.config import load_settings
from mlbox.errors import UsageError

from ..conftest import OS_USER
from ..serve._cases import GOOD
from ..serve.conftest import AsgiClient, Template, copy_box, open_box, serve_template  # noqa: F401 (a fixture)

PROFILE = {"customer_id": 990002, "updated_at": "2026-01-01T00:00:00Z", "age": 41, "plan": "basic", "region": None,
           "monthly_charges": 20.0, "email": None}  # fmt: skip


@pytest.fixture(scope="module")
def scoped_home(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The trained box with deployments churn and fs, and tokens: `app` (service: deployment churn, view
    customer_profile), `eng` (ml-engineer: deployment churn), `writer` (data-scientist: view customer_profile)."""
    home = copy_box(serve_template, tmp_path_factory.mktemp("scopes") / "box")
    with open_box(home) as box:
        box.deployments.create("churn", "churn:1", OS_USER)
        box.deployments.create("fs", "churn_fs:1", OS_USER)
        for user, role in (("app", "service"), ("eng", "ml-engineer"), ("writer", "data-scientist")):
            box.identity.add_user(OS_USER, user, role)
        make = box.identity.create_token
        tokens = {
            "app": make(OS_USER, "app", never_expires=True, deployments=["churn"], views=["customer_profile"])[1],
            "eng": make(OS_USER, "eng", never_expires=True, deployments=["churn"])[1],
            "writer": make(OS_USER, "writer", never_expires=True, views=["customer_profile"])[1],
            "open": serve_template.tokens["ml-engineer"],  # unscoped
        }
    return home, tokens


@pytest.fixture(scope="module")
def ctx(scoped_home: tuple[Path, dict[str, str]]) -> Iterator[ServeContext]:
    c = ServeContext(load_settings(scoped_home[0], environ={}))
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def api(ctx: ServeContext) -> AsgiClient:
    return AsgiClient(build_app(ctx))


@pytest.fixture(scope="module")
def tokens(scoped_home: tuple[Path, dict[str, str]]) -> dict[str, str]:
    return scoped_home[1]


def call(api: AsgiClient, token: str, method: str, path: str, body: Any = None) -> Any:
    return api.request(method, path, headers={"Authorization": f"Bearer {token}"}, json=body)


def forbidden(response: Any, *words: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error["message"], error


# stored and listed ---------------------------------------------------------------------------------


def test_scopes_are_stored_listed_and_move_the_revision(tmp_path: Path) -> None:
    with open_box(tmp_path / "b") as box:
        ident = box.identity
        before = ident.revision()
        info, _ = ident.create_token(OS_USER, OS_USER, deployments=["churn", "churn"], views=["usage"])
        assert ident.revision() > before
        assert (info.deployments, info.views) == (("churn",), ("usage",))
        assert info.as_dict()["scope"] == "deployment:churn view:usage"
        [listed] = [t for t in ident.tokens() if t.id == info.id]
        assert listed.scopes is not None and listed.scopes.allows("view", "usage")
        plain, _ = ident.create_token(OS_USER, OS_USER)
        assert plain.scopes is None and plain.as_dict()["scope"] == "all"
        for bad in ("../etc", "Churn", "a b", ""):
            with pytest.raises(UsageError):
                ident.create_token(OS_USER, OS_USER, deployments=[bad])
        revision = ident.revision()
        box.db.execute("DELETE FROM token_scopes WHERE token_id = ?", (info.id,))  # any change moves it
        assert ident.revision() > revision


def test_cli_creates_and_lists_scoped_tokens(tmp_path: Path, cli: Any) -> None:
    home = str(tmp_path / "b")
    open_box(Path(home)).close()
    r = cli("--home", home, "--json", "auth", "token", "create", "--user", OS_USER, "--deployment", "churn",
            "--deployment", "fs", "--view", "usage")  # fmt: skip
    assert r.exit_code == 0, (r.stdout, r.exception)
    made = r.json()
    assert made["deployments"] == ["churn", "fs"] and made["views"] == ["usage"]
    assert made["scope"] == "deployment:churn deployment:fs view:usage" and made["token"].startswith("mlbx_")
    listed = cli("--home", home, "--json", "auth", "token", "list").json()
    assert [t["scope"] for t in listed] == ["deployment:churn deployment:fs view:usage"]  # type: ignore[index, union-attr]
    text = cli("--home", home, "auth", "token", "list")
    assert "deployment:churn" in text.stdout


# HTTP: every route kind -------------------------------------------------------------------------


def test_predict_in_and_out_of_scope(api: AsgiClient, tokens: dict[str, str]) -> None:
    rows = {"rows": [GOOD]}
    assert call(api, tokens["app"], "POST", "/v1/deployments/churn/predict", rows).status_code == 200
    forbidden(call(api, tokens["app"], "POST", "/v1/deployments/fs/predict", rows), "deployment 'fs'")
    # a name that does not exist is refused the same way: a scoped token learns nothing about other names
    forbidden(call(api, tokens["app"], "POST", "/v1/deployments/ghost/predict", rows), "deployment 'ghost'")
    assert call(api, tokens["open"], "POST", "/v1/deployments/fs/predict", {"entities": [{"customer_id": 1}]}).status_code == 200


def test_deployment_reads_and_the_list(api: AsgiClient, tokens: dict[str, str]) -> None:
    listed = call(api, tokens["app"], "GET", "/v1/deployments").json()["deployments"]
    assert [d["name"] for d in listed] == ["churn"]
    everything = call(api, tokens["open"], "GET", "/v1/deployments").json()["deployments"]
    assert {d["name"] for d in everything} >= {"churn", "fs"}
    assert call(api, tokens["app"], "GET", "/v1/deployments/churn").status_code == 200
    forbidden(call(api, tokens["app"], "GET", "/v1/deployments/fs"), "fs")
    assert call(api, tokens["app"], "GET", "/v1/deployments/churn/monitoring").status_code == 200
    forbidden(call(api, tokens["app"], "GET", "/v1/deployments/fs/monitoring"), "fs")
    # a view-only token reaches no deployment at all
    forbidden(call(api, tokens["writer"], "GET", "/v1/deployments/churn"), "churn")
    assert call(api, tokens["writer"], "GET", "/v1/deployments").json()["deployments"] == []


def test_documents_show_only_the_scope(api: AsgiClient, tokens: dict[str, str]) -> None:
    paths = call(api, tokens["app"], "GET", "/openapi.json").json()["paths"]
    assert "/v1/deployments/churn/predict" in paths and "/v1/deployments/fs/predict" not in paths
    served = [r["name"] for r in call(api, tokens["app"], "GET", "/schema.json").json()["routes"]]
    assert served == ["churn"]
    assert "/v1/deployments/fs/predict" in call(api, tokens["open"], "GET", "/openapi.json").json()["paths"]


def test_manage_in_and_out_of_scope(api: AsgiClient, tokens: dict[str, str]) -> None:
    forbidden(call(api, tokens["eng"], "POST", "/v1/deployments/fs/canary", {"model": "churn_fs:1", "weight": 5}), "fs")
    forbidden(call(api, tokens["eng"], "POST", "/v1/deployments/fs/rollback", {}), "fs")
    r = call(api, tokens["eng"], "POST", "/v1/deployments/churn/canary", {"model": "churn:2", "weight": 10})
    assert r.status_code == 200 and r.json()["canary_model"] == "churn:2", r.text
    r = call(api, tokens["eng"], "POST", "/v1/deployments/churn/rollback", {})
    assert r.status_code == 200 and r.json()["canary_weight"] == 0, r.text


def test_online_read_every_view_must_be_in_scope(api: AsgiClient, tokens: dict[str, str]) -> None:
    def read(token: str, *features: str) -> Any:
        return call(api, token, "POST", "/v1/features/online", {"features": list(features), "entities": [{"customer_id": 1}]})

    assert read(tokens["app"], "customer_profile:age").status_code == 200
    assert read(tokens["app"], "customer_profile@1:age", "customer_profile:plan").status_code == 200
    forbidden(read(tokens["app"], "customer_profile:age", "usage:calls"), "view 'usage'")
    forbidden(read(tokens["app"], "usage@1:calls"), "view 'usage'")
    forbidden(read(tokens["eng"], "customer_profile:age"), "view 'customer_profile'")  # deployment-only: no views
    assert read(tokens["open"], "usage:calls").status_code == 200


def test_push_in_and_out_of_scope(api: AsgiClient, tokens: dict[str, str]) -> None:
    forbidden(call(api, tokens["writer"], "POST", "/v1/features/push", {"view": "usage", "rows": [{"customer_id": 1}]}), "usage")
    r = call(api, tokens["writer"], "POST", "/v1/features/push", {"view": "customer_profile", "rows": [PROFILE]})
    assert r.status_code == 200 and r.json()["rows"] == 1, r.text


def test_scope_refusals_are_audited(scoped_home: tuple[Path, dict[str, str]], api: AsgiClient, tokens: dict[str, str]) -> None:
    forbidden(call(api, tokens["app"], "GET", "/v1/deployments/fs"))
    with open_box(scoped_home[0]) as box:
        denied = box.db.query("SELECT actor, target, details FROM audit WHERE action = 'auth.denied' AND target = 'scope'")
    assert any(d["actor"] == "app" and "fs" in d["details"] for d in denied), denied


def test_revoking_a_scoped_token_reaches_a_warm_server_within_1s(
    scoped_home: tuple[Path, dict[str, str]], api: AsgiClient
) -> None:
    with open_box(scoped_home[0]) as box:
        info, token = box.identity.create_token(OS_USER, "app", deployments=["churn"])
    assert call(api, token, "GET", "/v1/deployments/churn").status_code == 200  # cached now
    with open_box(scoped_home[0]) as box:
        box.identity.revoke_token(OS_USER, info.id)
    start = time.monotonic()
    while call(api, token, "GET", "/v1/deployments/churn").status_code != 401:
        assert time.monotonic() - start < 1.0, "a revoked scoped token still worked after 1 s"
        time.sleep(0.02)


# the CLI acting by a scoped token ---------------------------------------------------------------


def test_cli_by_a_scoped_token(scoped_home: tuple[Path, dict[str, str]], tokens: dict[str, str], cli_run: Any) -> None:
    home = str(scoped_home[0])

    def run(token: str, *args: str) -> Any:
        return cli_run("--home", home, *args, env={"MLBOX_TOKEN": tokens[token]})

    r = run("app", "--json", "deploy", "status")
    assert r.exit_code == 0 and [d["name"] for d in json.loads(r.stdout)] == ["churn"], r.stderr
    r = run("app", "deploy", "status", "fs")
    assert r.exit_code == 5 and "deployment 'fs'" in r.stderr
    r = run("eng", "deploy", "rollback", "fs")
    assert r.exit_code == 5 and "deployment 'fs'" in r.stderr
    r = run("eng", "deploy", "sticky", "fs", "customer_id")
    assert r.exit_code == 5 and "deployment 'fs'" in r.stderr
    assert run("eng", "deploy", "status", "churn").exit_code == 0
    r = run("app", "features", "get", "usage:calls", "--entity", "customer_id=1")
    assert r.exit_code == 5 and "view 'usage'" in r.stderr
    assert run("app", "features", "get", "customer_profile:age", "--entity", "customer_id=1").exit_code == 0
    plain = str(Path(home) / "plain.parquet")
    r = run("app", "predict", "churn_fs:1", "--input", plain, "--out", str(Path(home) / "scored_a.parquet"))
    assert r.exit_code == 5 and "churn_fs:1" in r.stderr
    r = run("app", "predict", "churn:1", "--input", plain, "--out", str(Path(home) / "scored_b.parquet"))
    assert r.exit_code == 0, r.stderr
    r = run("open", "deploy", "status", "fs")  # unscoped: unrestricted as before
    assert r.exit_code == 0, r.stderr
    # every other command could reach resources outside the scope: a scoped token is refused there
    for args in (["features", "sql", "SELECT count(*) FROM usage"], ["monitor", "check", "fs"], ["models", "list"],
                 ["features", "list"]):  # fmt: skip
        r = run("eng", *args)
        assert r.exit_code == 5 and "token is scoped (deployment:churn)" in r.stderr, (args, r.stderr)
    assert run("open", "features", "sql", "SELECT count(*) FROM usage").exit_code == 0


def test_readyz_names_deployments_only_to_a_caller_who_may_read(api: AsgiClient, tokens: dict[str, str]) -> None:
    """The probe answers without a token, but deployment and model names (and problem texts) need `read`."""
    anonymous = api.get("/readyz")
    assert anonymous.status_code == 200, anonymous.text
    body = anonymous.json()
    assert body["status"] == "ready" and body["deployments"] == 2 and body["problems"] == 0
    assert "churn" not in anonymous.text and "models" not in body
    bogus = api.get("/readyz", headers={"Authorization": "Bearer mlbx_000000000000_" + "x" * 43})
    assert bogus.status_code == 200 and "churn" not in bogus.text
    named = call(api, tokens["open"], "GET", "/readyz").json()
    assert named["deployments"] == ["churn", "fs"] and set(named["models"]) == {"churn", "fs"}
