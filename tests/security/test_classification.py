"""Enforced classification: a pii/restricted field (the template's `customer_profile.email`) reads masked
— or is refused, with privacy.protected_reads=refuse — for every role without `features.read_pii`, in
every read path: CLI `features get`, HTTP `/v1/features/online`, `features sql` (SELECT *, read_parquet
of a batch file, glob, the internal dataset name), `features show` statistics, training-set exports and
the Python API. An admin reads it raw; predictions still feed models raw values.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from mlbox.api.app import build_app
from mlbox.api.context import ServeContext
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import PermissionDenied
from mlbox.features import privacy
from mlbox.security.roles import ACTIONS, PERMISSIONS, READ_PII, allowed

from ..conftest import OS_USER

REFUSE = {"MLBOX_PRIVACY_PROTECTED_READS": "refuse"}
CUSTOMER = 1014  # first row of the template's customers.csv
EMAIL = "customer1014@example.ae"


@dataclass(frozen=True)
class Project:
    home: Path
    tokens: dict[str, str]  # role -> token


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """The tabular-classification template, applied, ingested and materialized; a token per role."""
    home = tmp_path / "proj"
    box, _ = Box.init_project(home, "tabular-classification", OS_USER)
    with box:
        fs = box.features
        fs.apply(fs.load(), OS_USER)
        for view in fs.catalog.latest_views():
            fs.ingest(view.name, actor=OS_USER)
        fs.materialize(actor=OS_USER)
        tokens = {"admin": box.identity.create_token(OS_USER, OS_USER, never_expires=True)[1]}
        for role in ("viewer", "service", "data-scientist"):
            user = role.replace("-", "_")
            box.identity.add_user(OS_USER, user, role)
            tokens[role] = box.identity.create_token(OS_USER, user, never_expires=True)[1]
    yield Project(home, tokens)


def as_role(p: Project, role: str, **extra: str) -> dict[str, str]:
    return {"MLBOX_TOKEN": p.tokens[role], "MLBOX_HOME": str(p.home), **extra}


def batch_file(p: Project) -> Path:
    files = sorted((p.home / "features").rglob("*.parquet"))
    hits = [f for f in files if "email" in pd.read_parquet(f).columns]
    assert hits, files
    return hits[0]


def test_read_pii_is_an_admin_only_action() -> None:
    assert READ_PII == privacy.READ_PII == "features.read_pii" and READ_PII in ACTIONS
    assert [r for r in PERMISSIONS if allowed(r, READ_PII)] == ["admin"]


# CLI features get ---------------------------------------------------------------------------------


def test_cli_get_masks_email_for_a_service_token(project: Project, cli: Any) -> None:
    get = ("--json", "features", "get", "customer_profile:*", "-e", f"customer_id={CUSTOMER}")
    assert isinstance(cli(*get, env=as_role(project, "viewer")).exception, PermissionDenied)  # no online reads at all
    r = cli(*get, env=as_role(project, "service"))
    assert r.exit_code == 0, r
    row = json.loads(r.stdout)[0]
    assert row["email"] == privacy.MASK and row["plan"] and row["age"] is not None  # the rest stays readable
    r = cli("--json", "features", "get", "customer_profile:email", "-e", f"customer_id={CUSTOMER}", env=as_role(project, "admin"))
    assert json.loads(r.stdout)[0]["email"] == EMAIL
    refused = cli("features", "get", "customer_profile:email", "-e", f"customer_id={CUSTOMER}", env=as_role(project, "service", **REFUSE))
    assert isinstance(refused.exception, PermissionDenied)
    assert "customer_profile@1:email" in refused.exception.message and READ_PII in refused.exception.message


# HTTP /v1/features/online --------------------------------------------------------------------------


def post_online(project: Project, token: str, features: list[str], environ: dict[str, str] | None = None) -> httpx.Response:
    ctx = ServeContext(load_settings(project.home, environ=environ or {}))
    try:
        app = build_app(ctx)

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
                body = {"features": features, "entities": [{"customer_id": CUSTOMER}, {"customer_id": -5}]}
                return await client.post("/v1/features/online", json=body, headers={"Authorization": f"Bearer {token}"})

        return asyncio.run(go())
    finally:
        ctx.close()


def test_http_online_masks_for_service_token_and_refuses_when_configured(project: Project) -> None:
    r = post_online(project, project.tokens["service"], ["customer_profile:*"])
    assert r.status_code == 200, r.text
    got = r.json()["features"]
    assert got["email"] == [privacy.MASK, None]  # found: masked; unknown entity: still null
    assert got["plan"][0] and got["age"][0] is not None
    admin = post_online(project, project.tokens["admin"], ["customer_profile:email"]).json()["features"]
    assert admin["email"] == [EMAIL, None]
    refused = post_online(project, project.tokens["service"], ["customer_profile:email"], REFUSE)
    assert refused.status_code == 403, refused.text
    assert "customer_profile@1:email" in refused.json()["error"]["message"]
    # a read that leaves the protected field out is not refused
    assert post_online(project, project.tokens["service"], ["customer_profile:plan"], REFUSE).status_code == 200


def test_predictions_keep_reading_raw_values(project: Project) -> None:
    """api/predict.py's lookup calls get_online_features without a disclosure: the default is raw."""
    with Box(load_settings(project.home, environ={})) as box:
        got = box.features.get_online_features(["customer_profile:email"], [{"customer_id": CUSTOMER}])
        assert got["email"] == [EMAIL]
        masked = box.features.get_online_features(["customer_profile:email"], [{"customer_id": CUSTOMER}], protected="mask")
        assert masked["email"] == [privacy.MASK]


# features sql ----------------------------------------------------------------------------------------


def sql(cli: Any, project: Project, role: str, query: str, **extra: str) -> Any:
    return cli("--json", "features", "sql", query, "-n", "5000", env=as_role(project, role, **extra))


def test_sql_masks_every_route_to_the_raw_value(project: Project, cli: Any) -> None:
    path = batch_file(project)
    r = sql(cli, project, "viewer", f"SELECT * FROM customer_profile WHERE customer_id = {CUSTOMER}")
    assert r.exit_code == 0, r
    (row,) = json.loads(r.stdout)
    assert row["email"] == privacy.MASK and row["plan"] and list(row)[-1] == "email"  # same columns, same order
    everything = sql(cli, project, "viewer", "SELECT * FROM customer_profile_v1")
    assert "@example.ae" not in everything.stdout and len(json.loads(everything.stdout)) == 2200
    assert json.loads(sql(cli, project, "viewer", "SELECT count(*) AS n FROM customer_profile WHERE email LIKE '%@%'").stdout) == [{"n": 0}]
    # the batch file, a glob over the box, and the internal Arrow dataset mlbox registered
    for query in (f"SELECT email FROM read_parquet('{path}')", f"SELECT * FROM read_parquet('{path.parent}/*.parquet')",
                  f"SELECT * FROM glob('{project.home}/features/**')", "SELECT email FROM __data_customer_profile_v1"):  # fmt: skip
        r = sql(cli, project, "viewer", query)
        assert r.exit_code != 0 and "@example.ae" not in (r.stdout + str(r.exception)), (query, r)
    for query in ("SELECT * FROM __data_customer_profile_v1", "SELECT * FROM query_table('__data_customer_profile_v1')"):
        internal = sql(cli, project, "viewer", query)  # the dataset itself has no email column to read
        assert internal.exit_code == 0 and "email" not in json.loads(internal.stdout)[0] and "@example.ae" not in internal.stdout
    # a data scientist is masked too; the admin reads raw, batch files included
    assert "@example.ae" not in sql(cli, project, "data-scientist", "SELECT email FROM customer_profile").stdout
    admin = sql(cli, project, "admin", f"SELECT email FROM customer_profile WHERE customer_id = {CUSTOMER}")
    assert json.loads(admin.stdout) == [{"email": EMAIL}]
    assert EMAIL in sql(cli, project, "admin", f"SELECT email FROM read_parquet('{path}')").stdout


def test_sql_refuse_mode_refuses_only_reads_of_the_field(project: Project, cli: Any) -> None:
    r = sql(cli, project, "viewer", "SELECT * FROM customer_profile", **REFUSE)
    assert isinstance(r.exception, PermissionDenied) and "customer_profile@1:email" in r.exception.message
    assert isinstance(sql(cli, project, "viewer", "SELECT count(email) FROM customer_profile", **REFUSE).exception, PermissionDenied)
    ok = sql(cli, project, "viewer", "SELECT count(*) AS n, count(DISTINCT plan) AS plans FROM customer_profile", **REFUSE)
    assert ok.exit_code == 0 and json.loads(ok.stdout)[0]["n"] == 2200


def test_cli_refusal_is_one_red_line_with_the_permission_exit_code(project: Project, cli_run: Any) -> None:
    r = cli_run("features", "sql", "SELECT email FROM customer_profile", env=as_role(project, "viewer", **REFUSE))
    assert r.exit_code == PermissionDenied.exit_code and r.exit_code != 0
    assert "features.read_pii" in r.stderr and "@example.ae" not in r.stdout


# features show, training-set exports, the Python API ---------------------------------------------------------------


def test_show_hides_sample_values_of_protected_fields(project: Project, cli: Any) -> None:
    viewer = json.loads(cli("--json", "features", "show", "customer_profile", env=as_role(project, "viewer")).stdout)
    stats = {f["name"]: f["stats"] for f in viewer["fields"]}
    assert stats["email"]["masked"] and "top" not in stats["email"] and stats["email"]["count"] == 2200
    assert stats["plan"]["top"]  # unprotected fields keep their top values
    text = cli("features", "show", "customer_profile", env=as_role(project, "viewer")).stdout
    assert "@example.ae" not in text
    admin = json.loads(cli("--json", "features", "show", "customer_profile", env=as_role(project, "admin")).stdout)
    assert any("@example.ae" in str(v) for f in admin["fields"] if f["name"] == "email" for v in f["stats"]["top"])


def test_training_set_export_is_masked_for_a_data_scientist(project: Project, cli: Any, tmp_path: Path) -> None:
    labels = str(project.home / "data" / "labels.csv")
    args = ["--json", "features", "training-set", labels, "-F", "customer_profile:plan,customer_profile:email", "--timestamp", "event_ts"]
    out = tmp_path / "ds.parquet"
    r = cli(*args, "--out", str(out), env=as_role(project, "data-scientist"))
    assert r.exit_code == 0, r
    frame = pd.read_parquet(out)
    assert set(frame["email"].dropna()) == {privacy.MASK} and frame["plan"].notna().any()
    assert not list((project.home / "tmp").glob("ts-*.parquet"))  # the raw staging copy is gone
    raw = tmp_path / "admin.parquet"
    assert cli(*args, "--out", str(raw), env=as_role(project, "admin")).exit_code == 0
    admin_frame = pd.read_parquet(raw)
    assert admin_frame["email"].str.endswith("@example.ae").any()
    assert json.loads(r.stdout)["fingerprint"] == json.loads(cli(*args, "--out", str(raw), env=as_role(project, "admin")).stdout)["fingerprint"]
    plain = [*args[:4], "-F", "customer_profile:plan,usage:calls", *args[6:]]  # nothing protected: the file as the admin's
    ds_plain, admin_plain = tmp_path / "ds_plain.parquet", tmp_path / "admin_plain.parquet"
    assert cli(*plain, "--out", str(ds_plain), env=as_role(project, "data-scientist")).exit_code == 0
    assert cli(*plain, "--out", str(admin_plain), env=as_role(project, "admin")).exit_code == 0
    assert pd.read_parquet(ds_plain).equals(pd.read_parquet(admin_plain))
    gone = tmp_path / "refused.parquet"
    refused = cli(*args, "--out", str(gone), env=as_role(project, "data-scientist", **REFUSE))
    assert isinstance(refused.exception, PermissionDenied) and not gone.exists()


def test_python_api_defaults_mask_sql_and_training_sets(project: Project) -> None:
    with Box(load_settings(project.home, environ={})) as box:
        fs = box.features
        labels = project.home / "data" / "labels.csv"
        frame = fs.training_set(labels, ["customer_profile:email"], timestamp="event_ts").frame
        assert set(frame["email"].dropna()) == {privacy.MASK}
        raw = fs.training_set(labels, ["customer_profile:email"], timestamp="event_ts", protected="raw").frame
        assert raw["email"].str.endswith("@example.ae").any()
        arrow = fs.training_set(labels, ["customer_profile:age", "customer_profile:email"], timestamp="event_ts", as_arrow=True)
        assert set(arrow.frame.column("email").drop_null().to_pylist()) == {privacy.MASK}
        assert fs.sql(f"SELECT email FROM customer_profile WHERE customer_id = {CUSTOMER}")[1] == [(privacy.MASK,)]
        assert fs.sql(f"SELECT email FROM customer_profile WHERE customer_id = {CUSTOMER}", protected="raw")[1] == [(EMAIL,)]
        with pytest.raises(PermissionDenied, match="features.read_pii"):
            fs.sql("SELECT * FROM customer_profile", protected="refuse")
