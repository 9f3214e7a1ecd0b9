"""The `:` command line: the parser on its own, then in the app (screen, filter, errors on one line, role gate)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from mlbox.errors import UsageError
from mlbox.tui.app import MlboxApp
from mlbox.tui.cmdline import CommandLine
from mlbox.tui.commands import Command, parse
from mlbox.tui.filters import parse as parse_filter

from ._pilot import drive, fill, press, table_rows

NOW = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)


def test_commands_map_to_a_screen_and_a_filter() -> None:
    assert parse(":runs status=failed since=24h", NOW) == Command("runs", "status=failed started_at>=2026-12-01T07:00:00Z")
    assert parse("deploy churn_api", NOW) == Command("deployments", "churn_api")
    assert parse(":jobs", NOW) == Command("jobs")
    assert parse(":audit actor=x", NOW) == Command("audit", "actor=x")
    assert parse(":AUDIT since=2026-11-30", NOW) == Command("audit", "ts>=2026-11-30")
    assert parse(":jobs since=90m", NOW).filter == "submitted>=2026-12-02T05:30:00Z"
    assert parse(":q", NOW).quit


@pytest.mark.parametrize(
    ("text", "message"),
    [(":frobnicate", "unknown command :frobnicate"), (":", "empty command"),
     (":features since=1h", "features has no time column"), (":runs since=yesterday", "give a span"),
     (":models auc>high", "compares numbers or ISO times"), (":pulse x", "takes no filter"),
     (":runs 'open", "bad command")],
)  # fmt: skip
def test_bad_commands_are_usage_errors_with_a_hint(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse(text, NOW)
    assert caught.value.hint


def test_the_filter_compares_iso_times_across_formats() -> None:
    rows = [{"t": "2026-12-01T06:59:59.000000Z"}, {"t": "2026-12-01 07:00:01"}, {"t": "later"}]
    assert parse_filter("t>=2026-12-01T07:00:00Z").apply(rows) == [rows[1]]  # naive times are UTC; words never match
    assert parse_filter("t<2026-12-01").apply(rows) == []


def test_the_command_line_goes_to_the_screen_with_its_filter(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "colon")
        assert isinstance(app.screen, CommandLine)
        await fill(pilot, "runs status=failed since=24h")
        seen["runs"] = (app.current_mode, len(table_rows(app)), str(app.screen.query_one("#title", Static).render()))
        await press(pilot, "colon")
        await fill(pilot, "runs since=24h")
        seen["recent"] = len(table_rows(app))
        await press(pilot, "colon")
        await fill(pilot, "deploy churn_api")
        seen["deploy"] = (app.current_mode, [r["name"] for r in table_rows(app)])
        await press(pilot, "colon")
        await fill(pilot, "audit actor=nobody")
        seen["audit"] = (app.current_mode, table_rows(app))
        await press(pilot, "colon")
        await fill(pilot, "frobnicate now")
        seen["bad"] = (type(app.screen), str(app.screen.query_one("#command-error", Static).render()))
        await press(pilot, "escape", "escape", "escape")  # close the line, clear the filter, back a screen
        seen["after"] = app.current_mode

    drive(tui_home, script)
    mode, count, title = seen["runs"]
    assert (mode, count) == ("runs", 0) and "0 of 2" in title and "filter /status=failed started_at>=" in title
    assert seen["recent"] == 2  # the template's runs were trained minutes ago
    assert seen["deploy"] == ("deployments", ["churn_api"])
    assert seen["audit"] == ("audit", [])
    kind, error = seen["bad"]
    assert kind is CommandLine and error.startswith("✗ unknown command :frobnicate (commands: :pulse :runs")
    assert "\n" not in error
    assert seen["after"] == "deployments"


def test_the_command_line_refuses_screens_the_role_may_not_read(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "colon")
        await fill(pilot, "audit")
        seen["audit"] = (type(app.screen), str(app.screen.query_one("#command-error", Static).render()), app.current_mode)
        await press(pilot, "escape")
        await press(pilot, "colon")
        await fill(pilot, "models nosuchcolumn=1")  # known only once the rows are there: refused then, not a crash
        seen["models"] = (app.current_mode, len(table_rows(app)))
        await press(pilot, "colon")
        await fill(pilot, "q")
        seen["running"] = app.is_running

    drive(tui_home, script, os_user="vic")
    kind, error, mode = seen["audit"]
    assert kind is CommandLine and "may not read audit" in error and mode == "pulse"
    assert seen["models"] == ("models", 2)
    assert seen["running"] is False
