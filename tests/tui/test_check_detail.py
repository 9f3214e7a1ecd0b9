"""The Monitoring screen's check detail: a real drift check over records the real prediction-log writer wrote, opened
from the table, shows each feature's severity, the histogram it was judged on, and drift over time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from mlbox.config import load_settings
from mlbox.console.monitoring import severity
from mlbox.errors import NotFound
from mlbox.monitor.window import Window
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.tui.app import MlboxApp
from mlbox.tui.checkdetail import CheckDetail
from mlbox.tui.local import LocalClient
from mlbox.tui.widgets import BoxTable

from ..conftest import OS_USER
from ._pilot import drive, press
from .conftest import ENVIRON, open_box


def traffic(n: int = 400, seed: int = 1) -> list[Record]:
    """The last hour: the primary sees x0 shifted by +3 standard deviations (drift), the canary the training data."""
    rng, now, out = np.random.default_rng(seed), time.time(), []
    for i in range(n):
        variant = "canary" if i % 2 else "primary"
        shift = 3.0 if variant == "primary" else 0.0
        row = {"x0": float(rng.normal() + shift), "x1": float(rng.normal()), "x2": float(rng.normal())}
        out.append(Record(now - 3600 + i, f"req-{i:05d}", "churn_api", {"primary": "churn:1", "canary": "churn:2"}[variant],
                          variant, False, 3.0, None, orjson.dumps([row]).decode(), orjson.dumps([{"0": 0.5, "1": 0.5}]).decode(),
                          None))  # fmt: skip
    return out


@pytest.fixture
def checked(tui_home: Path) -> int:
    with open_box(tui_home) as box:
        writer = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
        writer.extend(traffic())
        writer.flush()
        writer.close()
        box.monitor.check("churn_api", Window.parse(), actor=OS_USER)
        row = box.db.one("SELECT max(id) AS id FROM monitor_checks")
    assert row is not None
    return int(row["id"])


def test_the_detail_is_the_stored_check_feature_by_feature(tui_home: Path, checked: int) -> None:
    client = LocalClient(load_settings(tui_home, environ=ENVIRON), os_user="vic")  # a viewer may read checks
    detail = client.check_detail(checked)
    with open_box(tui_home) as box:
        stored = box.monitor.records.check(checked)
    assert stored is not None
    primary = {f["name"]: f for f in detail["variants"]["primary"]["features"]}
    assert primary["x0"]["severity"] == "drift" and detail["variants"]["primary"]["drifted"] is True
    assert {f["severity"] for f in detail["variants"]["canary"]["features"]} <= {"ok", "watch"}
    raw = stored["variants"]["primary"]["features"]["x0"]
    assert primary["x0"]["histogram"]["reference"] == pytest.approx(raw["histogram"]["reference"])
    assert primary["x0"]["histogram"]["current"] == pytest.approx(raw["histogram"]["current"])
    assert primary["x0"]["ks"] == pytest.approx(raw["tests"]["ks"]["statistic"])
    assert detail["variants"]["primary"]["features"][0]["name"] == "x0"  # drift sorts first
    drift = detail["history"]["drift"]
    assert [d["id"] for d in drift if d["variant"] == "primary"] == [1, checked]  # the fixture's check, then this one
    with pytest.raises(NotFound, match="no monitoring check 999"):
        client.check_detail(999)


def test_severity_words() -> None:
    assert severity({"status": "drift"}) == "drift"
    assert severity({"status": "ok", "tests": {"psi": {"value": 0.15}}}) == "watch"
    assert severity({"status": "ok", "tests": {"psi": {"value": 0.02}}}) == "ok"
    assert severity({"status": "ok", "tests": {}}) == "ok"
    assert severity({"status": "too few rows"}) == "too few rows"


def test_enter_on_a_check_opens_it_and_shows_severity_histogram_and_history(tui_home: Path, checked: int) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "7")
        await press(pilot, "enter")  # the newest check first: this one, its primary row
        screen = app.screen
        assert isinstance(screen, CheckDetail)
        seen["title"] = str(screen.query_one("#title", Static).render())
        seen["rows"] = [[str(c) for c in screen.query_one(BoxTable).get_row_at(i)] for i in range(3)]
        seen["histogram"] = str(screen.query_one("#histogram", Static).render())
        seen["history"] = " ".join(str(s.render()) for s in screen.query("#history Static"))
        await press(pilot, "v")
        seen["other"] = str(screen.query_one("#title", Static).render())
        await press(pilot, "escape")
        seen["back"] = type(app.screen).__name__

    drive(tui_home, script, os_user="vic", size=(100, 34))
    assert "churn_api drift check" in seen["title"] and "· primary churn:1 · ! drift (200 rows" in seen["title"]
    assert seen["rows"][0][:2] == ["✗ drift", "x0"]
    assert "x0: reference (r) against current (c)" in seen["histogram"] and " r █" in seen["histogram"]
    assert "drift share primary" in seen["history"] and "drift share canary" in seen["history"]
    assert "· canary churn:2 ·" in seen["other"]
    assert seen["back"] == "MonitoringScreen"
