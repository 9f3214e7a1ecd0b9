"""A feature view in detail (console/views.py, tui/viewdetail.py): fields with badges, statistics, batches, lineage,
and sample values masked by role.

The box: the TUI template (quickstart's `tabular-classification`, whose `customer_profile.email` is pii and
restricted) materialized online, with one model version (`churn_fs:1`) trained on a training set of its views.
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

from mlbox.config import load_settings
from mlbox.console.service import Console
from mlbox.errors import NotFound, PermissionDenied
from mlbox.tui.app import MlboxApp
from mlbox.tui.screens.features import FeaturesScreen
from mlbox.tui.viewdetail import ViewDetailScreen
from mlbox.types import Actor

from ..conftest import OS_USER
from ._pilot import drive, keys_shown, press, table_rows, type_text
from .conftest import ENVIRON, Template, open_box

VIEW = "customer_profile"
FAST = {"n_estimators": 5, "max_depth": 2, "learning_rate": 0.3}


@pytest.fixture(scope="module")
def view_template(tui_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from threadpoolctl import threadpool_limits

    from mlbox.train.runner import train
    from mlbox.train.spec import parse_spec

    home = tmp_path_factory.mktemp("view-detail") / "box"
    shutil.copytree(tui_template.home, home)
    with open_box(home) as box:
        fs = box.features
        fs.materialize(actor=OS_USER)
        raw = yaml.safe_load((home / "train.yaml").read_text())
        raw.update(params=FAST, model="churn_fs", device="cpu")
        raw.pop("gate", None)
        with threadpool_limits(limits=1):
            train(parse_spec(raw, "train.yaml", home), store=fs, tracking=box.tracking, registry=box.registry,
                  actor=OS_USER, register=True)  # fmt: skip
    return home


@pytest.fixture
def home(view_template: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "box"
    shutil.copytree(view_template, dest)
    return dest


def detail(home: Path, role: str, environ: dict[str, str] | None = None, view: str = VIEW) -> dict[str, Any]:
    from mlbox.box import Box

    with Box(load_settings(home, environ={**ENVIRON, **(environ or {})}), actor="someone") as box:
        return Console(box, Actor("someone", role)).view_detail(view)  # type: ignore[arg-type]


def emails(d: dict[str, Any]) -> list[Any]:
    sample = d["sample"]
    i = sample["columns"].index("email")
    return [r[i] for r in sample["rows"]]


# the console -------------------------------------------------------------------------------------------
def test_a_viewer_gets_the_pii_field_masked_in_values_and_statistics(home: Path) -> None:
    d = detail(home, "viewer")
    assert json.loads(json.dumps(d, allow_nan=False)) == d  # what the management API sends, unchanged
    email = next(f for f in d["fields"] if f["name"] == "email")
    assert email == {"name": "email", "dtype": "string", "classification": "restricted", "pii": True, "masked": True}
    assert not any(f["masked"] for f in d["fields"] if f["name"] != "email")
    # a viewer may not read online values (`features get`): the sample is `features sql`'s, masked
    assert d["sample"]["source"] == "offline" and d["sample"]["masked"] == ["email"]
    assert len(d["sample"]["rows"]) == 5 and set(emails(d)) == {"***"}
    assert "@" not in json.dumps(d)  # no address anywhere: not in the sample, not in the statistics
    assert d["stats"]["email"]["masked"] is True and "min" not in d["stats"]["email"]
    assert d["stats"]["email"]["count"] == d["rows"] and d["stats"]["age"]["min"] is not None
    assert d["classification"] == "confidential" and d["owner"] == "crm-team" and d["entity"] == "customer"


def test_an_admin_reads_the_raw_values_online(home: Path) -> None:
    d = detail(home, "admin")
    assert d["sample"]["source"] == "online" and d["sample"]["masked"] == []
    assert all(str(e).endswith("@example.ae") for e in emails(d)) and len(emails(d)) == 5
    assert d["sample"]["columns"][-1] == "status" and {r[-1] for r in d["sample"]["rows"]} == {"ok"}
    assert not any(f["masked"] for f in d["fields"]) and "masked" not in d["stats"]["email"]


def test_a_data_scientist_reads_online_values_with_the_pii_masked(home: Path) -> None:
    d = detail(home, "data-scientist")
    raw = detail(home, "admin")
    assert d["sample"]["source"] == "online" and set(emails(d)) == {"***"}
    ages = d["sample"]["columns"].index("age")
    assert [r[ages] for r in d["sample"]["rows"]] == [r[ages] for r in raw["sample"]["rows"]]  # the rest as it is


def test_refuse_leaves_the_protected_field_out_of_the_sample(home: Path) -> None:
    d = detail(home, "viewer", {"MLBOX_PRIVACY_PROTECTED_READS": "refuse"})
    assert d["disclosure"] == "refuse" and d["sample"]["refused"] == ["email"]
    assert "email" not in d["sample"]["columns"] and d["sample"]["rows"] and "age" in d["sample"]["columns"]
    assert "@" not in json.dumps(d)


def test_batches_newest_first_and_statistics_summed(home: Path) -> None:
    d = detail(home, "viewer", view="usage")
    assert d["batch_count"] == len(d["batches"]) >= 1
    ids = [b["id"] for b in d["batches"]]
    assert ids == sorted(ids, reverse=True) and all(len(b["sha256"]) == 12 for b in d["batches"])
    assert d["stats"]["calls"]["count"] + d["stats"]["calls"]["nulls"] == d["rows"]


def test_lineage_names_the_versions_the_source_and_the_model_trained_on_the_view(home: Path) -> None:
    d = detail(home, "viewer")["lineage"]
    assert [v["version"] for v in d["versions"]] == [1] and d["source"] == "data/customers.csv"
    (ts,) = d["training_sets"]
    assert ts["versions"] == [1] and ts["models"] == ["churn_fs:1"]
    assert d["models"] == [{"model": "churn_fs:1", "versions": [1], "training_set": ts["fingerprint"], "archived": False}]
    # the template's churn:1 and churn:2 were trained on a Parquet file, not on the view
    assert detail(home, "viewer", view="usage")["lineage"]["models"][0]["model"] == "churn_fs:1"


def test_a_role_without_read_is_refused_and_audited_and_an_unknown_view_is_not_found(home: Path) -> None:
    with pytest.raises(PermissionDenied):
        detail(home, "nobody")
    with open_box(home) as box:
        seq = int(box.audit.head()["seq"])  # type: ignore[index]
        (last,) = box.audit.rows_between(seq, seq)
    assert (last["action"], last["actor"], last["target"]) == ("auth.denied", "someone", "read")
    with pytest.raises(NotFound):
        detail(home, "viewer", view="nope")


# the screen ----------------------------------------------------------------------------------------------
async def open_view(app: MlboxApp, pilot: Pilot[Any], view: str = VIEW) -> ViewDetailScreen:
    await press(pilot, "6")
    assert isinstance(app.screen, FeaturesScreen)
    rows = [r["view"] for r in table_rows(app)]
    await press(pilot, *["down"] * rows.index(view), "enter")
    screen = app.screen
    assert isinstance(screen, ViewDetailScreen) and screen.detail is not None
    return screen


def test_the_viewer_sees_the_pii_field_masked_and_esc_goes_back(home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        screen = await open_view(app, pilot)
        seen.update(screen.plain)
        seen["keys"] = keys_shown(app)
        await press(pilot, "l")
        seen["focused"] = type(app.focused).__name__
        await press(pilot, "escape")
        seen["after"] = type(app.screen).__name__

    drive(home, script, os_user="vic")
    assert "customer_profile@1" in seen["summary"] and "owner crm-team" in seen["summary"]
    assert "email | string | [PII] restricted [masked]" in seen["fields"]
    head, *rows = seen["sample"].splitlines()[1:]
    assert "email [masked]" in head and len(rows) == 5 and all(r.endswith("| ***") for r in rows)
    assert "masked: email" in seen["sample"] and "@example.ae" not in json.dumps(seen, default=sorted)
    assert {"tab('fields')", "tab('sample')", "tab('batches')", "tab('lineage')", "close", "reload"} <= seen["keys"]
    assert seen["focused"] == "Tree" and seen["after"] == "FeaturesScreen"


def test_an_admin_sees_the_raw_value_and_the_lineage_tree(home: Path) -> None:
    seen: dict[str, str] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        seen.update((await open_view(app, pilot)).plain)

    drive(home, script)  # the OS user: the box's first admin
    assert "[masked]" not in seen["sample"] and "@example.ae" in seen["sample"]
    assert "| ok" in seen["sample"]  # online, with each entity's status
    lines = seen["lineage"].splitlines()
    assert lines[0] == VIEW and lines[1].strip() == "source data/customers.csv"
    assert lines[2].strip().startswith("@1 (shown)  1 batch, 2,200 rows")
    assert lines[3].strip().startswith("training set ") and lines[4].strip() == "model churn_fs:1"


def test_enter_and_o_in_the_filter_type_into_it_and_do_not_open_a_view(home: Path) -> None:
    seen: list[Any] = []

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "6", "slash")
        assert isinstance(app.focused, Input)
        assert "open" not in keys_shown(app)
        await type_text(pilot, "profile")  # an `o`: typed, not opening
        await press(pilot, "enter")
        seen.append(type(app.screen).__name__)
        seen.append([r["view"] for r in table_rows(app)])
        await press(pilot, "o")
        screen = app.screen
        seen.append(screen.view if isinstance(screen, ViewDetailScreen) else None)

    drive(home, script, os_user="vic")
    assert seen == ["FeaturesScreen", ["customer_profile"], "customer_profile"]


def test_the_detail_fits_80x24(home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        screen = await open_view(app, pilot)
        await press(pilot, "s")
        seen["sample_visible"] = screen.query_one("#sample-table").region.height > 0
        seen["footer"] = screen.query_one("Footer").region.y

    drive(home, script, os_user="vic", size=(80, 24))
    assert seen == {"sample_visible": True, "footer": 23}
