"""Hostile names in every name-taking CLI command and HTTP path parameter: traversal (plain, %-encoded, double-encoded,
absolute, Windows), SQL and quotes, ANSI/OSC escapes, bidi overrides, zero-width characters, homoglyphs, 300 characters.

Each is refused with one error line (or a 4xx envelope), no raw escape byte reaches the terminal,
nothing is created in the box's tables or written next to it, and the box works afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from mlbox.errors import UsageError
from mlbox.types import check_name

from ..conftest import OS_USER
from ..serve.conftest import AsgiClient, Template, copy_box, meta_rows, open_box, serve_template
from ._hostile import HOSTILE_NAMES, assert_envelope, assert_refused, tree

__all__ = ["serve_template"]

CREATING = {
    "auth user add": ["auth", "user", "add", "{}", "--role", "viewer"],
    "auth token create": ["auth", "token", "create", "--user", "{}"],
    "deploy create": ["deploy", "create", "{}", "--model", "churn:1"],
    "monitor policy set": ["monitor", "policy", "set", "{}", "--window", "1h"],
    "package": ["package", "{}"],
    "jobs quota": ["jobs", "quota", "{}", "--max-running", "1"],
}
LOOKUP = {
    "deploy status": ["deploy", "status", "{}"],
    "deploy promote": ["deploy", "promote", "{}"],
    "monitor check": ["monitor", "check", "{}"],
    "monitor policy remove": ["monitor", "policy", "remove", "{}"],
    "models show": ["models", "show", "{}"],
    "models promote": ["models", "promote", "{}", "--to", "staging"],
    "features show": ["features", "show", "{}"],
    "features ingest": ["features", "ingest", "{}"],
    "features lineage": ["features", "lineage", "{}"],
    "features materialize": ["features", "materialize", "{}"],
    "labels ingest": ["labels", "ingest", "{}", "labels.csv"],
    "runs show": ["runs", "show", "{}"],
    "auth user role": ["auth", "user", "role", "{}", "viewer"],
    "auth user disable": ["auth", "user", "disable", "{}"],
}
DEFECTS: dict[str, str] = {}  # a defect found here is an xfail(strict=True) entry until it is fixed


# Optional arguments: an empty string reads as "not given" (every view, every deployment), not as a name.
OPTIONAL = {"deploy status", "features show", "features ingest", "features lineage", "features materialize"}


# Lookups only read: a representative subset keeps the suite fast; every creating command gets every name.
LOOKUP_NAMES = ["../x", "%252e%252e%252f", "/etc/passwd", "..\\x", "x; DROP TABLE runs; --", "\x1b[31mred\x1b[0m", "x\u202egnp.exe", ""]


def _cases(table: dict[str, list[str]], names: list[str]) -> list[object]:
    return [
        pytest.param(args, [n for n in names if n or name not in OPTIONAL], id=name, marks=[pytest.mark.xfail(strict=True, reason=DEFECTS[name])] if name in DEFECTS else [])
        for name, args in table.items()
    ]


@pytest.fixture(scope="module")
def home(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = copy_box(serve_template, tmp_path_factory.mktemp("names") / "box")
    with open_box(home) as box:
        box.deployments.create("bad", "churn:1", OS_USER)
    (home / "labels.csv").write_text("request_id,label\nr1,1\n")
    return home


TABLES = "SELECT 'users', count(*) FROM users UNION ALL SELECT 'deployments', count(*) FROM deployments UNION ALL SELECT 'tokens', count(*) FROM tokens"


@pytest.mark.parametrize("args,names", _cases(CREATING, HOSTILE_NAMES) + _cases(LOOKUP, LOOKUP_NAMES))
def test_hostile_names_are_refused(cli_run, home: Path, args: list[str], names: list[str]) -> None:  # type: ignore[no-untyped-def]
    counts, outside = meta_rows(home, TABLES), tree(home.parent, skip=home)
    for name in names:
        result = cli_run("--home", str(home), *[a.replace("{}", name) for a in args])
        assert_refused(result)
    assert meta_rows(home, TABLES) == counts, "a hostile name was stored"
    assert tree(home.parent, skip=home) == outside, "something was written outside the box"


@pytest.mark.parametrize("name", HOSTILE_NAMES + ["Admin", "_x", "1x", "x-y", "x.y", "x y", "ﬁle", "Ｘ"])
def test_check_name_refuses_and_never_echoes_raw_control_characters(name: str) -> None:
    with pytest.raises(UsageError) as info:
        check_name(name, "deployment name")
    assert "\x1b" not in str(info.value) and "\u202e" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["view", "field", "entity"])
@pytest.mark.parametrize("name", ["x; DROP TABLE feature_views", '"x"', "../x", "\x1b[31mx", "x\u200by", "\u0430ge"])
def test_hostile_names_in_features_yaml_are_refused(cli_run, home: Path, kind: str, name: str) -> None:  # type: ignore[no-untyped-def]
    import json

    view, field, entity = ("v", "f", "e")
    view, field, entity = (name if kind == "view" else view, name if kind == "field" else field, name if kind == "entity" else entity)
    doc = {"entities": [{"name": entity, "join_keys": {"id": "int64"}}],
           "views": [{"name": view, "entity": entity, "timestamp": "ts", "fields": [{"name": field, "dtype": "int64"}]}]}  # fmt: skip
    path = home.parent / "defs.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML: the quoting stays exact
    before = meta_rows(home, "SELECT count(*) AS n FROM feature_views")
    assert_refused(cli_run("--home", str(home), "features", "apply", "--file", str(path)))
    assert meta_rows(home, "SELECT count(*) AS n FROM feature_views") == before


# HTTP path parameters ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(home: Path) -> Iterator[AsgiClient]:
    from mlbox.api.app import build_app
    from mlbox.api.context import ServeContext
    from mlbox.config import load_settings

    ctx = ServeContext(load_settings(home, environ={}))
    ctx.start()
    try:
        yield AsgiClient(build_app(ctx))
    finally:
        ctx.close()


PATH_NAMES = ["..", "../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%252e%252e%252f", "%2e%2e", "..\\..\\x", "C:\\x",
              "x%00y", "%1b[31mx", "x;DROP TABLE deployments", "\u0430dmin", "a" * 300]  # fmt: skip


@pytest.mark.parametrize("name", PATH_NAMES)
@pytest.mark.parametrize("method,route", [("GET", "/v1/deployments/{}"), ("GET", "/v1/deployments/{}/monitoring"),
                                          ("POST", "/v1/deployments/{}/predict"), ("POST", "/v1/deployments/{}/rollback")])  # fmt: skip
def test_hostile_http_path_parameters_are_refused(api: AsgiClient, serve_template: Template, home: Path, name: str, method: str, route: str) -> None:
    raw = name if "%" in name else quote(name, safe="")
    headers = {"Authorization": f"Bearer {serve_template.tokens['admin']}", "Content-Type": "application/json"}
    outside = tree(home.parent, skip=home)
    response = api.request(method, route.format(raw), headers=headers, **({"json": {}} if method == "POST" else {}))
    error = assert_envelope(response, (400, 404, 422))
    assert "\x1b" not in str(error)
    assert tree(home.parent, skip=home) == outside
    assert api.get("/v1/deployments/bad", headers=headers).status_code == 200


@pytest.mark.parametrize("name", [n for n in HOSTILE_NAMES if n] + ["customer_profile\x00", "customer_profile/../x"])
def test_hostile_view_names_in_http_bodies_are_refused(api: AsgiClient, serve_template: Template, home: Path, name: str) -> None:
    headers = {"Authorization": f"Bearer {serve_template.tokens['admin']}"}
    pushes = meta_rows(home, "SELECT count(*) AS n FROM feature_push_rows")
    push = api.post("/v1/features/push", json={"view": name, "rows": [{"customer_id": 1}]}, headers=headers)
    online = api.post("/v1/features/online", json={"features": [f"{name}:age", f"customer_profile:{name}"],
                                                   "entities": [{"customer_id": 1}]}, headers=headers)  # fmt: skip
    for response in (push, online):
        assert "\x1b" not in assert_envelope(response, (400, 404, 422))["message"]
    assert meta_rows(home, "SELECT count(*) AS n FROM feature_push_rows") == pushes


def test_the_box_still_works(cli_run, home: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("--home", str(home), "doctor")
    assert result.exit_code == 0, result.stdout + result.stderr
