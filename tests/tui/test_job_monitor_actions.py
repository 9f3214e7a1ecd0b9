"""Retry a job and submit training (Jobs), check drift now (Monitoring): role gate, confirmation, change, record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Button

from mlbox.tui.app import MlboxApp
from mlbox.tui.confirm import Confirm
from mlbox.tui.screens.jobs import JobsScreen
from mlbox.tui.screens.monitoring import MonitoringScreen

from ._pilot import drive, keys_shown, press, table_rows
from .conftest import open_box
from .test_actions import confirm_text, latest
from .test_more_actions import apply_with


def notes(app: MlboxApp) -> list[str]:
    return [n.message for n in app._notifications]


def test_a_viewer_may_neither_retry_nor_submit_training(tui_home: Path) -> None:
    with open_box(tui_home, "ana") as box:
        box.jobs.cancel(2, "ana")
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "5")
        seen["keys"] = keys_shown(app)
        await press(pilot, "Y", "T")
        seen["screen"] = type(app.screen)

    drive(tui_home, script, os_user="vic")
    assert not {"retry_job", "submit_train"} & seen["keys"]
    assert seen["screen"] is JobsScreen
    with open_box(tui_home) as box:
        assert box.jobs.get(2).status == "cancelled" and len(box.jobs.list_jobs()) == 2


def test_a_data_scientist_retries_her_cancelled_job(tui_home: Path) -> None:
    with open_box(tui_home, "ana") as box:
        box.jobs.cancel(2, "ana")
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "5")
        seen["keys"] = keys_shown(app)
        await press(pilot, "Y")
        seen["confirm"] = confirm_text(app)
        seen["focused"] = app.focused
        await press(pilot, "enter")  # Cancel: nothing changes
        seen["cancelled"] = type(app.screen)
        await press(pilot, "Y")
        await apply_with(app, pilot, "flaky disk")
        seen["row"] = table_rows(app)[0]
        seen["dimmed"] = app.screen.check_action("retry_job", ())  # queued again: nothing to retry
        await press(pilot, "down")
        seen["not_ended"] = app.screen.check_action("retry_job", ())  # job 1: queued

    drive(tui_home, script, os_user="ana")
    assert "retry_job" in seen["keys"]
    assert seen["confirm"]["diff"] == "change:   cancelled → queued  (attempt 1)"
    assert seen["confirm"]["command"] == "command:  mlbox jobs retry 2"
    assert isinstance(seen["focused"], Button) and seen["focused"].id == "cancel"
    assert seen["cancelled"] is JobsScreen
    assert (seen["row"]["id"], seen["row"]["status"]) == (2, "queued")
    assert seen["dimmed"] is None and seen["not_ended"] is None
    with open_box(tui_home) as box:
        assert box.jobs.get(2).status == "queued"
    entry = latest(tui_home, "jobs.retry")
    assert entry["actor"] == "ana" and entry["target"] == "job:2"
    assert entry["details"] == {"was": "cancelled", "reason": "flaky disk", "via": "tui"}


def test_a_data_scientist_submits_the_projects_training_spec(tui_home: Path) -> None:
    spec = str(tui_home / "train.yaml")
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "5")
        seen["keys"] = keys_shown(app)
        await press(pilot, "T")
        seen["confirm"] = confirm_text(app)
        seen["focused"] = app.focused
        await press(pilot, "enter")
        seen["cancelled"] = type(app.screen)
        await press(pilot, "T")
        await apply_with(app, pilot, "new labels")
        seen["row"] = table_rows(app)[0]

    drive(tui_home, script, os_user="ana")
    assert "submit_train" in seen["keys"]
    assert seen["confirm"]["command"] == f"command:  mlbox jobs submit train {spec}"
    assert f"spec {spec}" in seen["confirm"]["affects"]
    assert isinstance(seen["focused"], Button) and seen["focused"].id == "cancel"
    assert seen["cancelled"] is JobsScreen
    row = seen["row"]
    assert (row["id"], row["type"], row["status"], row["user"]) == (3, "train", "queued", "ana")
    with open_box(tui_home) as box:
        stored = box.db.one("SELECT payload FROM jobs WHERE id = 3")
        assert stored is not None and json.loads(stored["payload"]) == {"spec": spec, "register": False}
    entry = latest(tui_home, "jobs.submit")
    assert entry["actor"] == "ana" and entry["target"] == "job:3"
    assert entry["details"] == {"type": "train", "project": "default", "gpus": 0, "reason": "new labels", "via": "tui"}


def test_a_viewer_checks_drift_now_in_a_worker_and_sees_the_verdict(tui_home: Path) -> None:
    """`monitor check` needs only `read`: every role has it, a viewer included; the check is kept in the history."""
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "7")
        seen["keys"] = keys_shown(app)
        seen["before"] = len(table_rows(app))
        await press(pilot, "C")
        seen["confirm"] = confirm_text(app)
        seen["reason"] = len(app.screen.query("#reason"))  # no audit entry is written: no reason is asked
        seen["focused"] = app.focused
        await press(pilot, "enter")
        seen["cancelled"] = type(app.screen)
        await press(pilot, "C")
        assert isinstance(app.screen, Confirm)
        app.screen.query_one("#apply", Button).focus()
        await press(pilot, "enter")
        seen["screen"] = type(app.screen)
        seen["notes"] = notes(app)
        seen["ids"] = {r["id"] for r in table_rows(app)}

    drive(tui_home, script, os_user="vic")
    assert "drift_check" in seen["keys"]
    assert seen["confirm"]["command"] == "command:  mlbox monitor check churn_api"
    assert seen["reason"] == 0
    assert isinstance(seen["focused"], Button) and seen["focused"].id == "cancel"
    assert seen["cancelled"] is MonitoringScreen and seen["screen"] is MonitoringScreen
    assert any(n.startswith("churn_api: ") for n in seen["notes"]), seen["notes"]
    with open_box(tui_home) as box:
        rows = box.db.query("SELECT id, kind, checked_by FROM monitor_checks WHERE deployment = 'churn_api' ORDER BY id")
    assert [(r["kind"], r["checked_by"]) for r in rows][-1] == ("drift", "vic") and len(rows) == 2
    assert rows[-1]["id"] in seen["ids"] or seen["before"] == 0


def test_a_bad_training_spec_is_refused_before_anything_is_queued(tui_home: Path) -> None:
    (tui_home / "train.yaml").write_text("experiment: churn\nflavor: [not, a, flavor]\n")
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "5", "T")
        await apply_with(app, pilot, "")
        seen["screen"] = type(app.screen)
        seen["notes"] = [(n.severity, n.message) for n in app._notifications]

    drive(tui_home, script, os_user="ana")
    assert seen["screen"] is JobsScreen
    assert [s for s, _ in seen["notes"]] == ["error"], seen["notes"]
    with open_box(tui_home) as box:
        assert len(box.jobs.list_jobs()) == 2
