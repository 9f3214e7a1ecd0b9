"""A model version in detail (console/models.py, tui/modeldetail.py): lineage, gate, ONNX parity, signature and
the deployments serving it.

The box: the TUI template (churn:1 and churn:2 trained from a plain Parquet file, churn_api serving churn:1 with
churn:2 as its canary), and for a training-set lineage a copy with `churn_fs:1` trained on the template's
train.yaml (a training set of its feature views) under a gate it fails (roc_auc min 0.999).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual.pilot import Pilot
from textual.widgets import Input

from mlbox.console.service import Console
from mlbox.errors import NotFound
from mlbox.tui.app import MlboxApp
from mlbox.tui.modeldetail import ModelDetailScreen
from mlbox.tui.screens.models import ModelsScreen
from mlbox.types import Actor

from ..conftest import OS_USER
from ._pilot import drive, press, settle, type_text
from .conftest import Template, open_box

FAST = {"n_estimators": 5, "max_depth": 2, "learning_rate": 0.3}


def detail(home: Path, ref: str, role: str = "viewer") -> dict[str, Any]:
    with open_box(home) as box:
        return Console(box, Actor("someone", role)).model_detail(ref)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fs_home(tui_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from threadpoolctl import threadpool_limits

    from mlbox.train.runner import train
    from mlbox.train.spec import parse_spec

    home = tmp_path_factory.mktemp("model-detail") / "box"
    shutil.copytree(tui_template.home, home)
    with open_box(home) as box:
        raw = yaml.safe_load((home / "train.yaml").read_text())
        raw.update(params=FAST, model="churn_fs", device="cpu", gate={"metric": "roc_auc", "min": 0.999})
        with threadpool_limits(limits=1):
            train(parse_spec(raw, "train.yaml", home), store=box.features, tracking=box.tracking, registry=box.registry,
                  actor=OS_USER, register=True)  # fmt: skip
    return home


def test_detail_of_a_plain_file_training_round_trips(tui_home: Path) -> None:
    for ref in ("churn:1", "churn:2"):
        d = detail(tui_home, ref)
        assert json.loads(json.dumps(d, allow_nan=False)) == d
        assert d["model"] == ref and d["flavor"] == "xgboost" and d["task"] == "classification"
        assert d["onnx"]["ok"] is True and d["onnx"]["max_abs_diff"] <= d["onnx"]["tolerance"]
        assert d["deployments"] == ["churn_api"]
        lin = d["lineage"]
        assert lin["training_set"] is None and lin["data_path"].endswith("plain.parquet")
        assert lin["run"] is not None and lin["run"]["experiment"] == "churn" and lin["run"]["status"] == "finished"
        assert d["gate"] is None  # the spec declared no gate
        assert [i["name"] for i in d["signature"]["inputs"]] == ["x0", "x1", "x2"]
        assert d["signature"]["outputs"][0]["name"] == "y"
    assert detail(tui_home, "churn:1")["serving"] == [{"deployment": "churn_api", "as": "primary", "weight": 90.0}]
    assert detail(tui_home, "churn:2")["serving"] == [{"deployment": "churn_api", "as": "canary", "weight": 10.0}]
    assert detail(tui_home, "churn:latest")["model"] == "churn:2"


def test_unknown_model_is_not_found(tui_home: Path) -> None:
    with pytest.raises(NotFound):
        detail(tui_home, "churn:9")
    with pytest.raises(NotFound):
        detail(tui_home, "nosuch:1")


def test_training_set_lineage_and_a_failed_gate(fs_home: Path) -> None:
    d = detail(fs_home, "churn_fs:1")
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    ts = d["lineage"]["training_set"]
    assert ts is not None and ts["fingerprint"] == d["lineage"]["dataset_fingerprint"]
    assert "customer_profile@1" in ts["views"] and ts["labels"].endswith("labels.csv") and ts["rows"] > 0
    assert d["lineage"]["data_path"] is None
    g = d["gate"]
    assert g is not None and g["metric"] == "roc_auc" and g["min"] == 0.999 and g["passed"] is False
    assert g["value"] == d["metrics"]["roc_auc"] and "< min 0.999" in g["reasons"]
    assert d["deployments"] == []


def test_enter_opens_the_detail_and_esc_goes_back(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "3")
        assert isinstance(app.screen, ModelsScreen)
        await press(pilot, "enter")
        screen = app.screen
        assert isinstance(screen, ModelDetailScreen)
        seen.update(screen.plain, detail=screen.detail)
        await press(pilot, "escape")
        seen["back"] = type(app.screen)

    drive(tui_home, script, os_user="vic")
    d = seen["detail"]
    assert d["model"] == "churn:1"
    assert d["lineage"]["run"]["id"] in seen["lineage"]
    assert "data file " in seen["lineage"] and "plain.parquet" in seen["lineage"]
    assert f"sha256 {d['lineage']['dataset_fingerprint']}" in seen["lineage"]
    assert seen["parity"].startswith("✓ parity ") and " ≤ " in seen["parity"]
    assert seen["gate"].startswith("– no gate")
    assert "churn_api (primary 90%)" in seen["serving"]
    assert seen["signature"].splitlines()[0].startswith("x0 | float64 | numeric")
    assert seen["back"] is ModelsScreen


def test_o_opens_the_detail_of_the_highlighted_version(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "3", "down", "o")
        assert isinstance(app.screen, ModelDetailScreen)
        seen["ref"] = app.screen.ref
        seen["serving"] = app.screen.plain["serving"]

    drive(tui_home, script)
    assert seen == {"ref": "churn:2", "serving": "served by churn_api (canary 10%)"}


def test_enter_in_the_open_filter_applies_it_and_opens_nothing(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "3", "slash")
        assert isinstance(app.focused, Input)
        await type_text(pilot, "churn:2")
        await press(pilot, "enter")
        seen["screen"] = type(app.screen)
        assert isinstance(app.screen, ModelsScreen)
        seen["shown"] = [r["model"] for r in app.screen.table.shown]

    drive(tui_home, script)
    assert seen == {"screen": ModelsScreen, "shown": ["churn:2"]}


def test_failed_gate_and_training_set_tree_on_screen(fs_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "box"
    shutil.copytree(fs_home, home)
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        app.push_screen(ModelDetailScreen("churn_fs:1"))
        await settle(pilot)
        assert isinstance(app.screen, ModelDetailScreen)
        seen.update(app.screen.plain)

    drive(home, script)
    assert seen["gate"].startswith("✗ gate roc_auc ") and seen["gate"].endswith("< 0.999 (failed)")
    head, metrics = seen["summary"].splitlines()  # two lines, each escaped on its own: no literal "\n"
    assert head.startswith("churn_fs:1  xgboost classification  no alias  active") and metrics.startswith("roc_auc 0.")
    assert "training set " in seen["lineage"] and "view customer_profile@1" in seen["lineage"]
    assert "labels " in seen["lineage"] and seen["serving"] == "served by no deployment"
