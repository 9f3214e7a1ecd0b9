"""`mlbox package NAME` builds a Bento offline that plain `bentoml serve` runs outside the box: same routes, its own
service token (the box's users and token hashes never leave the box), the deployment's models, its sidecar (prediction log and shadow) working from inside the Bento, and
BentoML's own client discovering its predict endpoint; the Bento's service file writes no environment.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import bentoml
import httpx
import pytest

from mlbox.serve import process as server

from ..conftest import OS_USER
from .conftest import Template, copy_box, mlbox, open_box, parse_metrics, sample_rows, subprocess_env, wait_for


@pytest.fixture(scope="module")
def packaged(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = copy_box(serve_template, tmp_path_factory.mktemp("package") / "box")
    with open_box(home) as box:
        box.deployments.create("packed", "churn:1", OS_USER)
        box.deployments.canary("packed", "churn:2", 50, OS_USER)
        box.deployments.shadow("packed", "churn_bc:1", OS_USER)
        box.deployments.create("other", "churn_fs:1", OS_USER)
    result = mlbox(home, "--json", "package", "packed", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    built = json.loads(result.stdout)
    PACKAGED_TOKEN["token"], PACKAGED_TOKEN["id"] = built["token"], built["token_id"]
    return home, built["tag"]


PACKAGED_TOKEN: dict[str, str] = {}


def test_the_bento_holds_only_the_deployment_and_its_models(packaged: tuple[Path, str]) -> None:
    home, tag = packaged
    name, version = tag.split(":")
    assert name == "mlbox-packed"
    bento = home / "bentoml" / "bentos" / name / version
    assert "orjson" in (bento / "bento.yaml").read_text()  # the serving packages, pinned, without locking
    src = bento / "src"
    assert (src / "service.py").exists() and (src / "mlbox" / "serve" / "predlog" / "sidecar.py").exists()
    db = sqlite3.connect(src / "box" / "meta.db")
    try:
        assert [r[0] for r in db.execute("SELECT name FROM deployments")] == ["packed"]
        versions = {f"{n}:{v}" for n, v in db.execute("SELECT name, version FROM model_versions")}
        # its own credentials only: one service user, one token; none of the box's users or token hashes
        assert [r[0] for r in db.execute("SELECT id FROM tokens")] == [PACKAGED_TOKEN["id"]]
        assert {r[0] for r in db.execute("SELECT name FROM users WHERE role != 'admin'")} == {"bento_packed"}
        # and that token reaches only its own deployment
        assert list(db.execute("SELECT kind, name FROM token_scopes")) == [("deployment", "packed")]
    finally:
        db.close()
    with open_box(home) as box:  # made in the box, so it is listed and revocable there
        assert PACKAGED_TOKEN["id"] in {t.id for t in box.identity.tokens("bento_packed")}
    assert versions == {"churn:1", "churn:2", "churn_bc:1"}


def test_plain_bentoml_serve_runs_it_with_its_own_token(packaged: tuple[Path, str], serve_template: Template, tmp_path: Path) -> None:
    home, tag = packaged
    env = {k: v for k, v in subprocess_env(home).items() if not k.startswith("MLBOX_")}  # outside any box
    env.update(BENTOML_HOME=str(home / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    port = server.free_port()
    proc = server.start([sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                        env, port, tmp_path / "bento.log")  # fmt: skip
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        token = {"Authorization": f"Bearer {PACKAGED_TOKEN['token']}"}
        box_token = {"Authorization": f"Bearer {serve_template.tokens['service']}"}
        assert client.post("/v1/deployments/packed/predict", json={"rows": sample_rows(1)}, headers=box_token).status_code == 401
        variants = set()
        for row in sample_rows(20, seed=3):
            response = client.post("/v1/deployments/packed/predict", json={"rows": [row]}, headers=token)
            assert response.status_code == 200, response.text
            variants.add((response.json()["model"], response.json()["variant"]))
        assert variants <= {("churn:1", "primary"), ("churn:2", "canary")} and len(variants) == 2
        assert client.post("/v1/deployments/packed/predict", json={"rows": sample_rows(1)}).status_code == 401
        other = client.post("/v1/deployments/other/predict", json={"rows": sample_rows(1)}, headers=token)
        assert other.status_code == 403 and "not scoped to deployment 'other'" in other.text  # before any lookup
        shadowed = wait_for(
            lambda: parse_metrics(client.get("/metrics").text).get('mlbox_shadow_predictions_total{deployment="packed"}') == 20,
            30, "the packaged sidecar's shadow predictions",
        )  # fmt: skip
        assert shadowed
        # BentoML's own client finds the packaged deployment and gets plain HTTP's answers
        row = sample_rows(1, seed=5)
        by_model: dict[str, object] = {}
        for _ in range(30):  # half the requests go to the canary: collect both variants' answers
            answer = client.post("/v1/deployments/packed/predict", json={"rows": row}, headers=token).json()
            by_model[answer["model"]] = answer["predictions"]
        with bentoml.SyncHTTPClient(f"http://127.0.0.1:{port}", token=PACKAGED_TOKEN["token"]) as bento_client:
            assert set(bento_client.endpoints) == {"packed"}
            for _ in range(6):
                answer = bento_client.packed(rows=row)
                assert answer["predictions"] == by_model[answer["model"]]
    finally:
        server.stop(proc)
    log = (tmp_path / "bento.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_the_bento_service_file_sets_no_environment(packaged: tuple[Path, str]) -> None:
    home, tag = packaged
    bento = home / "bentoml" / "bentos" / tag.replace(":", "/")
    assert "environ" not in (bento / "src" / "service.py").read_text()
    assert "BENTOML_DO_NOT_TRACK" in (bento / "bento.yaml").read_text()  # workers get it from the Bento's envs


def test_package_of_an_unknown_deployment_is_one_clear_error(packaged: tuple[Path, str]) -> None:
    home, _ = packaged
    result = mlbox(home, "package", "ghost")
    assert result.returncode != 0
    assert result.stderr.startswith("error:") and "ghost" in result.stderr
