"""Promote and archive (Models), roll back, canary and shadow (Deployments): role gate, confirmation, change, audit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Button, Input, OptionList

from mlbox.tui.app import MlboxApp
from mlbox.tui.choose import Choose
from mlbox.tui.confirm import Confirm
from mlbox.tui.screens.deployments import DeploymentsScreen
from mlbox.tui.screens.models import ModelsScreen
from mlbox.tui.split import SplitEditor

from ._pilot import drive, keys_shown, press, table_rows
from .conftest import open_box
from .test_actions import confirm_text, latest


async def apply_with(app: MlboxApp, pilot: Pilot[Any], reason: str) -> None:
    assert isinstance(app.screen, Confirm)
    app.screen.query_one("#reason", Input).value = reason
    await press(pilot, "tab", "enter")  # focus starts on Cancel; tab moves it to Apply


def test_a_data_scientist_sees_neither_promote_nor_rollback_nor_shadow(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "3")
        seen["models"] = keys_shown(app)
        await press(pilot, "P", "A")
        seen["after_P"] = type(app.screen)
        await press(pilot, "4")
        seen["deploy"] = keys_shown(app)
        await press(pilot, "R", "S", "C")
        seen["after_RS"] = type(app.screen)
        seen["palette"] = {c.title for c in app.get_system_commands(app.screen)}

    drive(tui_home, script, os_user="ana")
    assert not {"promote", "archive"} & seen["models"] and seen["after_P"] is ModelsScreen
    assert not {"rollback", "shadow", "weights", "canary"} & seen["deploy"] and seen["after_RS"] is DeploymentsScreen
    assert "deployments: filter" in seen["palette"]
    assert not {"deployments: roll back", "deployments: shadow"} & seen["palette"]
    with open_box(tui_home) as box:
        assert box.registry.holder("churn", "staging") is None
        d = box.deployments.get("churn_api")
        assert (d.canary_weight, d.shadow_model, d.revision) == (10.0, None, 2)


def test_an_ml_engineer_promotes_a_version_to_an_alias(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "3", "down", "P")
        assert isinstance(app.screen, Choose)
        await press(pilot, "down", "enter")  # staging, production: the second
        seen["confirm"] = confirm_text(app)
        seen["focused"] = app.focused
        await press(pilot, "enter")  # Cancel: nothing changes
        seen["cancelled"] = type(app.screen)
        await press(pilot, "P", "down", "enter")
        await apply_with(app, pilot, "passed the gates")
        seen["rows"] = {r["model"]: r["aliases"] for r in table_rows(app)}

    drive(tui_home, script, os_user="mel")
    assert seen["confirm"]["diff"] == "change:   churn:production  unset → churn:2"
    assert seen["confirm"]["command"] == "command:  mlbox models promote churn:2 --to production --expect none"
    assert isinstance(seen["focused"], Button) and seen["focused"].id == "cancel"
    assert seen["cancelled"] is ModelsScreen
    assert seen["rows"] == {"churn:1": "", "churn:2": "production"}
    with open_box(tui_home) as box:
        assert box.registry.holder("churn", "production") == 2
    entry = latest(tui_home, "models.promote")
    assert entry["actor"] == "mel" and entry["target"] == "churn:2"
    assert entry["details"] == {"alias": "production", "from": None, "reason": "passed the gates", "via": "tui"}


def test_promote_is_compare_and_set_against_what_the_screen_showed(tui_home: Path) -> None:
    """Someone moves the alias after the screen loaded: the TUI's promotion is refused, not an overwrite."""
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "3", "down", "P", "enter")  # staging, shown unset
        with open_box(tui_home, "mel") as box:
            box.registry.set_alias("churn:1", "staging", "mel")
        await apply_with(app, pilot, "")
        seen["screen"] = type(app.screen)

    drive(tui_home, script, os_user="mel")
    assert seen["screen"] is ModelsScreen
    with open_box(tui_home) as box:
        assert box.registry.holder("churn", "staging") == 1  # the other move stands


def test_an_ml_engineer_rolls_back_the_canary_then_the_primary(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4")
        seen["palette"] = {c.title for c in app.get_system_commands(app.screen)}
        await press(pilot, "R")
        seen["canary"] = confirm_text(app)
        await press(pilot, "colon")  # not over a dialog: the command line waits until it is answered
        seen["over_dialog"] = type(app.screen)
        await apply_with(app, pilot, "p99 up")
        seen["after"] = table_rows(app)[0]
        seen["dimmed"] = app.screen.check_action("rollback", ())  # no canary traffic, no previous primary

    drive(tui_home, script, os_user="mel")
    assert {"deployments: roll back", "deployments: shadow", "deployments: canary weight"} <= seen["palette"]
    assert seen["over_dialog"] is Confirm
    assert seen["canary"]["diff"].startswith("change:   90/10 → 100/0  (churn:1 / churn:2")
    assert seen["canary"]["command"] == "command:  mlbox deploy rollback churn_api"
    assert (seen["after"]["split"], seen["after"]["revision"]) == ("100/0", 3)
    assert seen["dimmed"] is None
    entry = latest(tui_home, "deploy.rollback")
    assert entry["details"] == {"canary": "churn:2", "weight": 0, "reason": "p99 up", "via": "tui"}

    with open_box(tui_home, "mel") as box:
        box.deployments.promote("churn_api", "mel")  # churn:2 primary, churn:1 kept for rollback

    async def primary(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4", "R")
        seen["primary"] = confirm_text(app)
        await apply_with(app, pilot, "")

    drive(tui_home, primary, os_user="mel")
    assert seen["primary"]["diff"] == "change:   primary churn:2 → churn:1  (the previous primary back)"
    with open_box(tui_home) as box:
        assert box.deployments.get("churn_api").primary_model == "churn:1"


def test_an_ml_engineer_starts_a_canary_choosing_its_model_and_weight(tui_home: Path) -> None:
    with open_box(tui_home, "mel") as box:
        box.deployments.promote("churn_api", "mel")  # churn:2 primary, no canary
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4")
        seen["keys"] = keys_shown(app)
        await press(pilot, "C")
        assert isinstance(app.screen, Choose)
        seen["choices"] = [str(o.prompt) for o in app.screen.query_one("#choices", OptionList).options]
        await press(pilot, "enter")  # churn:1
        assert isinstance(app.screen, SplitEditor)
        await press(pilot, "right", "enter")  # a new canary starts at 10%: one step up
        seen["new"] = confirm_text(app)
        await apply_with(app, pilot, "try churn:1 again")
        seen["row"] = table_rows(app)[0]
        await press(pilot, "C")
        seen["choices_after"] = [str(o.prompt) for o in app.screen.query_one("#choices", OptionList).options]
        await press(pilot, "enter", "left", "left", "enter")
        seen["again"] = confirm_text(app)
        await press(pilot, "escape")  # cancelled: nothing changes

    drive(tui_home, script, os_user="mel")
    assert "canary" in seen["keys"] and seen["choices"] == ["churn:1"]  # the primary is not offered
    assert seen["new"]["diff"] == "change:   canary – → churn:1; split 100/0 → 85/15  (churn:2 / churn:1)"
    assert seen["new"]["command"] == "command:  mlbox deploy canary churn_api --model churn:1 --weight 15"
    assert (seen["row"]["canary"], seen["row"]["split"]) == ("churn:1", "85/15")
    assert seen["choices_after"] == ["churn:1  (the canary now)"]
    assert seen["again"]["diff"] == "change:   canary churn:1 → churn:1; split 85/15 → 95/5  (churn:2 / churn:1)"
    entry = latest(tui_home, "deploy.canary")
    assert entry["details"] == {"model": "churn:1", "weight": 15.0, "sticky_key": None, "reason": "try churn:1 again",
                                "via": "tui"}  # fmt: skip
    with open_box(tui_home) as box:
        d = box.deployments.get("churn_api")
        assert (d.canary_model, d.canary_weight) == ("churn:1", 15.0)


def test_an_ml_engineer_sets_then_removes_the_shadow(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4", "S")
        assert isinstance(app.screen, Choose)
        seen["choices"] = [str(o.prompt) for o in app.screen.query_one("#choices", OptionList).options]
        await press(pilot, "enter")
        seen["set"] = confirm_text(app)
        await apply_with(app, pilot, "compare answers")
        seen["shadow"] = table_rows(app)[0]["shadow"]
        await press(pilot, "S")
        seen["choices_after"] = [str(o.prompt) for o in app.screen.query_one("#choices", OptionList).options]
        await press(pilot, "enter")
        seen["remove"] = confirm_text(app)
        await apply_with(app, pilot, "")
        seen["removed"] = table_rows(app)[0]["shadow"]

    drive(tui_home, script, os_user="mel")
    assert seen["choices"] == ["churn:2"]  # the primary is not offered
    assert seen["set"]["diff"] == "change:   shadow – → churn:2"
    assert seen["set"]["command"] == "command:  mlbox deploy shadow churn_api --model churn:2"
    assert seen["shadow"] == "churn:2"
    assert seen["choices_after"] == ["remove the shadow churn:2"]
    assert seen["remove"]["command"] == "command:  mlbox deploy shadow churn_api --remove"
    assert seen["removed"] == ""
    with open_box(tui_home) as box:
        shadows = [e.details for e in box.audit.entries(action="deploy.shadow")]
        assert box.audit.verify().ok
    assert {"model": "churn:2", "reason": "compare answers", "via": "tui"} in shadows
    assert {"model": None, "via": "tui"} in shadows


def test_an_ml_engineer_archives_a_version_and_it_loses_its_alias(tui_home: Path) -> None:
    with open_box(tui_home, "mel") as box:
        box.registry.set_alias("churn:1", "production", "mel")
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "3", "A")
        seen["confirm"] = confirm_text(app)
        await apply_with(app, pilot, "superseded")
        seen["rows"] = {r["model"]: (r["archived"], r["aliases"]) for r in table_rows(app)}
        seen["dimmed"] = (app.screen.check_action("archive", ()), app.screen.check_action("promote", ()))

    drive(tui_home, script, os_user="mel")
    assert seen["confirm"]["diff"] == "change:   churn:1  active (production) → archived"
    assert seen["confirm"]["command"] == "command:  mlbox models archive churn:1"
    assert "loses production" in seen["confirm"]["affects"]
    assert seen["rows"] == {"churn:1": (True, ""), "churn:2": (False, "")}
    assert seen["dimmed"] == (None, None)  # archived: neither again
    entry = latest(tui_home, "models.archive")
    assert entry["details"] == {"aliases_removed": ["production"], "reason": "superseded", "via": "tui"}
