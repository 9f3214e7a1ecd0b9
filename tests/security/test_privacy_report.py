"""`mlbox privacy report`: where personal data lives — protected fields, the online tables holding them,
training sets that include them, models trained on those sets, the category counts their reference
profiles keep, and the deployments (prediction logs) serving those models; locations, never values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

from ..conftest import OS_USER

FAST_XGB = {"n_estimators": 5, "max_depth": 2, "learning_rate": 0.3}


def build(home: Path) -> dict[str, str]:
    """The template with `plan` also tagged pii; a model trained on plan (and on a set holding email), deployed."""
    box, _ = Box.init_project(home, "tabular-classification", OS_USER)
    features = home / "features.yaml"
    features.write_text(features.read_text().replace("description: Subscription plan.}", "description: Subscription plan., pii: true}"))
    with box:
        fs = box.features
        fs.apply(fs.load(), OS_USER)
        for view in fs.catalog.latest_views():
            fs.ingest(view.name, actor=OS_USER)
        fs.materialize(actor=OS_USER)
        raw = yaml.safe_load((home / "train.yaml").read_text())
        raw["data"]["features"] = [*raw["data"]["features"], "customer_profile:email"]
        raw["data"]["drop"] = ["email"]  # in the training set, not a model input
        raw.update(params=FAST_XGB, model="churn_pii", device="cpu")
        raw.pop("gate", None)
        result = train(parse_spec(raw, "train.yaml", home), store=fs, tracking=box.tracking, registry=box.registry,
                       actor=OS_USER, register=True)  # fmt: skip
        model = result.version.ref if result.version else ""
        box.deployments.create("churn_api", model, OS_USER)
        box.identity.add_user(OS_USER, "vera", "viewer")
        token = box.identity.create_token(OS_USER, "vera", never_expires=True)[1]
    return {"model": model, "token": token}


def test_report_lists_every_location_of_protected_data(tmp_path: Path, cli: Any) -> None:
    home = tmp_path / "proj"
    made = build(home)
    env = {"MLBOX_HOME": str(home), "MLBOX_TOKEN": made["token"]}  # a viewer: the report needs only `read`
    r = cli("--json", "privacy", "report", env=env)
    assert r.exit_code == 0, r
    found = json.loads(r.stdout)
    fields = {(f["view"], f["field"]): f for f in found["fields"]}
    assert fields[("customer_profile@1", "email")] == {
        "view": "customer_profile@1", "field": "email", "dtype": "string", "pii": True, "classification": "restricted"
    }  # fmt: skip
    assert fields[("customer_profile@1", "plan")]["pii"] and fields[("customer_profile@1", "plan")]["classification"] == "confidential"
    assert not any(view.startswith("usage") for view, _ in fields)  # internal, not pii: not listed
    (table,) = found["online_tables"]
    assert table["table"] == "online.db:fv_customer_profile_v1" and table["rows"] == 2000 and set(table["fields"]) == {"plan", "email"}
    (ts,) = found["training_sets"]
    assert set(ts["fields"]) == {"customer_profile@1:plan", "customer_profile@1:email"} and ts["rows"] == 4000
    (model,) = found["models"]
    assert model["model"] == made["model"] and model["training_set"] == ts["fingerprint"] and model["inputs"] == ["plan"]
    with Box(load_settings(home, environ={})) as box:
        assert box.registry.get(made["model"]).lineage["dataset_fingerprint"] == ts["fingerprint"]
    (profile,) = found["profiles"]
    assert profile == {"model": made["model"], "column": "plan", "field": "customer_profile@1:plan", "levels": 3}
    (dep,) = found["deployments"]
    assert dep["deployment"] == "churn_api" and dep["model"] == made["model"] and dep["role"] == "primary"
    assert dep["logged_inputs"] == ["plan"] and dep["prediction_log"] == "predictions/churn_api"
    assert "@example.ae" not in r.stdout  # locations, never values
    text = cli("privacy", "report", env=env)
    assert text.exit_code == 0 and "churn_api" in text.stdout and "customer_profile@1" in text.stdout


def test_report_on_a_box_without_protected_fields_is_empty(tmp_path: Path, cli: Any) -> None:
    home = tmp_path / "bare"
    Box.init_project(home, "tabular-classification", OS_USER)[0].close()  # features not applied yet
    r = cli("--json", "privacy", "report", env={"MLBOX_HOME": str(home)})
    assert r.exit_code == 0, r
    assert json.loads(r.stdout) == {s: [] for s in ("fields", "online_tables", "training_sets", "models", "profiles", "deployments")}
    assert "none" in cli("privacy", "report", env={"MLBOX_HOME": str(home)}).stdout
