"""Mutating actions end to end: role gating, the confirmation (diff, command, reason, Cancel first), the change and its audit entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, Static

from mlbox.errors import PermissionDenied
from mlbox.tui.app import MlboxApp
from mlbox.tui.local import LocalClient
from mlbox.tui.confirm import Confirm
from mlbox.tui.screens.deployments import DeploymentsScreen
from mlbox.tui.screens.jobs import JobsScreen
from mlbox.tui.split import SplitEditor

from ..conftest import OS_USER, raw_connect
from ._pilot import drive, keys_shown, press, table_rows, type_text
from .conftest import ENVIRON, open_box


def confirm_text(app: MlboxApp) -> dict[str, str]:
    screen = app.screen
    assert isinstance(screen, Confirm)
    return {w: str(screen.query_one(f"#{w}", Static).render()) for w in ("diff", "affects", "command")}


async def give_reason(app: MlboxApp, pilot: Pilot[Any], reason: str) -> None:
    app.screen.query_one("#reason", Input).focus()
    await type_text(pilot, reason)
    await press(pilot, "enter", "enter")  # enter moves to Apply, the second presses it


def latest(home: Path, action: str) -> dict[str, Any]:
    with open_box(home) as box:
        entry = box.audit.entries(limit=1, action=action)[0]
    return entry.as_dict()


def test_viewer_sees_no_mutating_action_and_no_audit_screen(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        seen["pulse_keys"] = keys_shown(app)
        await press(pilot, "4")
        seen["deploy_keys"] = keys_shown(app)
        await press(pilot, "W")
        seen["after_W"] = type(app.screen)
        await press(pilot, "5")
        seen["jobs_keys"] = keys_shown(app)
        await press(pilot, "X")
        seen["after_X"] = type(app.screen)
        await press(pilot, "8")
        seen["after_8"] = app.current_mode

    drive(tui_home, script, os_user="vic")
    assert "go('audit')" not in seen["pulse_keys"] and "go('deployments')" in seen["pulse_keys"]
    assert "weights" not in seen["deploy_keys"] and "filter" in seen["deploy_keys"]
    assert seen["after_W"] is DeploymentsScreen
    assert "cancel_job" not in seen["jobs_keys"]
    assert seen["after_X"] is JobsScreen
    assert seen["after_8"] == "jobs"
    with open_box(tui_home) as box:
        assert box.deployments.get("churn_api").canary_weight == 10.0
        assert box.jobs.get(1).status == "queued"


def test_admin_changes_the_canary_weight_with_a_reason(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4")
        assert "weights" in keys_shown(app)
        # Cancel has the default focus: enter on the dialog changes nothing; esc in the editor neither
        await press(pilot, "W", "left", "enter")
        assert isinstance(app.screen, Confirm)
        await press(pilot, "enter")
        assert isinstance(app.screen, DeploymentsScreen)
        await press(pilot, "W", "left", "escape")
        assert isinstance(app.screen, DeploymentsScreen)
        seen["untouched"] = table_rows(app)[0]["revision"]
        await press(pilot, "W")
        assert isinstance(app.screen, SplitEditor)
        await press(pilot, "right", "right", "right", "enter")
        seen["confirm"] = confirm_text(app)
        seen["focused"] = app.focused
        await give_reason(app, pilot, "rollout step 2")
        seen["rows"] = table_rows(app)

    drive(tui_home, script)
    assert seen["confirm"]["diff"].startswith("change:   90/10 → 75/25")
    assert "churn:1 / churn:2" in seen["confirm"]["diff"]
    assert seen["confirm"]["command"] == "command:  mlbox deploy canary churn_api --model churn:2 --weight 25"
    assert "every request to churn_api" in seen["confirm"]["affects"]
    assert isinstance(seen["focused"], Button) and seen["focused"].id == "cancel"
    assert seen["untouched"] == 2
    assert (seen["rows"][0]["primary_weight"], seen["rows"][0]["canary_weight"]) == (75.0, 25.0)
    with open_box(tui_home) as box:
        d = box.deployments.get("churn_api")
        assert (d.canary_model, d.canary_weight, d.revision) == ("churn:2", 25.0, 3)
    entry = latest(tui_home, "deploy.canary")
    assert entry["actor"] == OS_USER and entry["target"] == "churn_api"
    assert entry["details"] == {"model": "churn:2", "weight": 25.0, "sticky_key": None, "reason": "rollout step 2", "via": "tui"}
    with open_box(tui_home) as box:
        assert box.audit.verify().ok


def test_admin_cancels_a_job_with_a_reason(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "5")
        assert table_rows(app)[0]["id"] == 2  # ana's job, newest first: an admin may cancel anyone's
        await press(pilot, "X")
        seen["confirm"] = confirm_text(app)
        app.screen.query_one("#reason", Input).value = "not needed"
        await press(pilot, "tab", "enter")  # focus starts on Cancel; tab moves it to Apply
        seen["rows"] = table_rows(app)

    drive(tui_home, script)
    assert seen["confirm"]["diff"] == "change:   queued → cancelled"
    assert seen["confirm"]["command"] == "command:  mlbox jobs cancel 2"
    assert "job of ana" in seen["confirm"]["affects"]
    assert [r["status"] for r in seen["rows"]] == ["cancelled", "queued"]
    entry = latest(tui_home, "jobs.cancel")
    assert entry["target"] == "job:2" and entry["details"] == {"was": "queued", "reason": "not needed", "via": "tui"}


def test_a_data_scientist_cancels_only_their_own_job(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "5")
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        seen["own"] = screen.check_action("cancel_job", ())
        await press(pilot, "down")
        seen["other"] = screen.check_action("cancel_job", ())
        await press(pilot, "X")
        seen["after_X"] = type(app.screen)

    drive(tui_home, script, os_user="ana")
    assert seen["own"] is True and seen["other"] is None  # someone else's job: shown dimmed, not runnable
    assert seen["after_X"] is JobsScreen
    with open_box(tui_home) as box:
        assert box.jobs.get(1).status == "queued"


def test_audit_verify_reports_an_intact_chain_then_the_edited_entry(tui_home: Path) -> None:
    titles: list[str] = []

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "8", "v")
        titles.append(str(app.screen.query_one("#title", Static).render()))

    drive(tui_home, script)
    edited = latest(tui_home, "deploy.canary")["seq"]
    conn = raw_connect(tui_home / "meta.db")  # a hand edit: the append-only triggers dropped first
    conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
    conn.execute("UPDATE audit SET details = '{\"model\":\"churn:9\"}' WHERE seq = ?", (edited,))
    conn.close()
    drive(tui_home, script)
    with open_box(tui_home) as box:
        total = box.audit.head()["seq"]  # type: ignore[index]
    assert titles[0] == f" ✓ audit chain intact: {total} entries verified"
    assert titles[1].startswith(f" ✗ audit chain BROKEN at entry {edited}")


def test_the_client_refuses_what_the_role_lacks_and_audits_the_refusal(tui_home: Path) -> None:
    from mlbox.config import load_settings

    client = LocalClient(load_settings(tui_home, environ=ENVIRON), os_user="vic")
    assert client.me().role == "viewer"
    assert not client.me().may("deploy canary") and client.me().may("deploy status")
    with pytest.raises(PermissionDenied):
        client.set_canary_weight("churn_api", 50, "no")
    assert latest(tui_home, "auth.denied")["details"] == {"role": "viewer", "via": "tui"}
    with open_box(tui_home) as box:
        assert box.deployments.get("churn_api").canary_weight == 10.0
    mel = LocalClient(load_settings(tui_home, environ=ENVIRON), os_user="mel")
    assert mel.set_canary_weight("churn_api", 50, "")["canary_weight"] == 50.0
    assert latest(tui_home, "deploy.canary")["details"]["via"] == "tui"


def test_without_a_canary_the_weight_key_is_dimmed_and_the_client_refuses(tui_home: Path) -> None:
    from mlbox.config import load_settings
    from mlbox.errors import Conflict

    with open_box(tui_home) as box:
        box.deployments.promote("churn_api", "mel")  # churn:2 becomes the primary; no canary left
    with pytest.raises(Conflict, match="no canary"):
        LocalClient(load_settings(tui_home, environ=ENVIRON)).set_canary_weight("churn_api", 20, "")
    states: list[object] = []

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4")
        states.append(app.screen.check_action("weights", ()))
        await press(pilot, "W")
        states.append(type(app.screen))

    drive(tui_home, script)
    assert states == [None, DeploymentsScreen]  # shown dimmed (the role may), but there is nothing to weigh
