"""Every screen against a real box: what it shows, the filter, esc, `?`, pause, and escaping of hostile text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Static

from mlbox.tui.app import MlboxApp
from mlbox.console.service import disk_use
from mlbox.tui.widgets import size
from mlbox.tui.help import Help
from mlbox.tui.screens.base import BoxScreen, TableScreen
from mlbox.tui.screens.pulse import PulseScreen

from ..conftest import OS_USER
from ._pilot import cells, drive, fill, press, table_rows, type_text
from .conftest import open_box


def static_text(app: MlboxApp, widget_id: str) -> str:
    """A panel's text: the Static's own, or that of the Statics inside it, one per line."""
    widget = app.screen.query_one(f"#{widget_id}")
    if isinstance(widget, Static):
        return str(widget.render())
    return "\n".join(str(s.render()) for s in widget.query(Static))


def test_pulse_shows_server_deployments_jobs_audit_and_disk(tui_home: Path) -> None:
    seen: dict[str, str] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        assert isinstance(app.screen, PulseScreen)
        for panel in ("server", "deployments", "jobs", "audit", "alerts"):
            seen[panel] = static_text(app, panel)
        seen["disk"] = size(disk_use(tui_home)["total"])  # while the app runs: the WAL files count too

    drive(tui_home, script)
    assert "✗ down" in seen["server"] and "127.0.0.1:9" in seen["server"]
    assert "churn_api  churn:1 | churn:2  90/10" in seen["deployments"]
    assert "◌ queued 2" in seen["jobs"]
    assert "deploy.canary churn_api" in seen["audit"] and "jobs.submit job:2" in seen["audit"]
    assert "! drift  churn_api drift" in seen["alerts"]
    assert f"disk {seen['disk']}\ndata " in seen["alerts"]  # then each part over 1 MiB


def test_pulse_sees_a_running_server_as_up(tui_home: Path) -> None:
    """A real HTTP listener answering /readyz on the box's serve address (not mlbox serve itself: that needs a minute)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from mlbox.config import load_settings
    from mlbox.tui.local import probe

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = load_settings(tui_home, environ={"MLBOX_SERVE_PORT": str(server.server_address[1])})
        assert probe(settings).state == "up"
    finally:
        server.shutdown()
        server.server_close()
    assert probe(settings).state == "down"


def test_number_keys_reach_every_screen_and_esc_walks_back(tui_home: Path) -> None:
    visited: list[tuple[str, list[str]]] = []

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        for key in "2345678":
            await press(pilot, key)
            screen = app.screen
            assert isinstance(screen, TableScreen)
            visited.append((app.current_mode, [str(r[screen.KEY]) for r in table_rows(app)]))
        await press(pilot, "escape")
        visited.append((app.current_mode, []))
        await press(pilot, *["escape"] * 6)
        visited.append((app.current_mode, []))

    drive(tui_home, script)
    modes = [m for m, _ in visited]
    assert modes == ["runs", "models", "deployments", "jobs", "features", "monitoring", "audit", "monitoring", "pulse"]
    rows = dict(visited[:7])
    with open_box(tui_home) as box:
        runs = [r.id for r in box.tracking.runs()]
        head = box.audit.head()
    assert rows["runs"] == runs and len(runs) == 2
    assert rows["models"] == ["churn:1", "churn:2"]
    assert rows["deployments"] == ["churn_api"]
    assert rows["jobs"] == ["2", "1"]
    assert rows["features"] == ["customer_profile", "usage"]
    assert rows["monitoring"] == ["1/primary", "1/canary"]
    assert head is not None and rows["audit"] == [str(s) for s in range(head["seq"], 0, -1)]


def test_features_and_monitoring_show_badges_and_verdicts(tui_home: Path) -> None:
    shown: dict[str, list[list[str]]] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "6")
        shown["features"] = cells(app)
        await press(pilot, "7")
        shown["monitoring"] = cells(app)

    drive(tui_home, script)
    assert shown["features"][0] == ["customer_profile", "1", "customer", "5", "1", "2200", "[PII] confidential", "crm-team"]
    assert shown["features"][1][6] == "internal"
    primary, canary = shown["monitoring"]
    assert primary[:5] == ["1", "churn_api", "drift", "primary", "! drift"] and primary[7] == "x0, x1"
    assert canary[3:5] == ["canary", "✓ ok"]


def test_filter_narrows_the_table_and_esc_clears_it(tui_home: Path) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "8", "slash")
        await fill(pilot, "action=jobs.submit")
        seen["filtered"] = [r["seq"] for r in table_rows(app)]
        seen["title"] = static_text(app, "title")
        await press(pilot, "slash")
        await type_text(pilot, " !ana")
        await press(pilot, "enter")
        seen["two_terms"] = [r["seq"] for r in table_rows(app)]
        await press(pilot, "escape")
        seen["cleared"] = len(table_rows(app))
        seen["mode"] = app.current_mode
        await press(pilot, "slash")
        await fill(pilot, "colour=red")
        seen["bad"] = len(table_rows(app))

    drive(tui_home, script)
    with open_box(tui_home) as box:
        submits = [e.seq for e in box.audit.entries(action="jobs.submit")]
        mine = [e.seq for e in box.audit.entries(action="jobs.submit", actor=OS_USER)]
        total = box.audit.head()["seq"]  # type: ignore[index]
    assert seen["filtered"] == submits and len(submits) == 2
    assert f"2 of {total}" in seen["title"] and "filter /action=jobs.submit" in seen["title"]
    assert seen["two_terms"] == mine
    assert seen["cleared"] == total and seen["mode"] == "audit"  # the first esc clears, it does not leave
    assert seen["bad"] == total  # an unknown column is refused (a notification), the table is unchanged


def test_question_mark_lists_this_screens_bindings(tui_home: Path) -> None:
    shown: dict[str, str] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4", "question_mark")
        assert isinstance(app.screen, Help)
        shown["deployments"] = str(app.screen.query_one("#keys", Static).render())
        await press(pilot, "escape", "8", "question_mark")
        shown["audit"] = str(app.screen.query_one("#keys", Static).render())

    drive(tui_home, script)
    assert "canary weight" in shown["deployments"] and "filter" in shown["deployments"]
    assert "verify chain" in shown["audit"] and "canary weight" not in shown["audit"]


def test_control_and_ansi_characters_in_data_are_escaped(tui_home: Path) -> None:
    with open_box(tui_home) as box:
        box.audit.record(OS_USER, "test.evil", "x\x1b[2J\x1b]0;owned\x07y", {"note": "a\rb"})
    shown: list[list[str]] = []

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "8")
        shown.extend(cells(app))

    drive(tui_home, script)
    top = shown[0]
    assert top[3] == "test.evil"
    assert top[4] == "x\\x1b[2J\\x1b]0;owned\\x07y" and "\x1b" not in "".join(top)
    assert "\\r" in top[5]


def test_pause_stops_the_refresh_loop(tui_home: Path) -> None:
    loads: list[int] = []

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        app.refresh_s = 0.05
        screen = app.screen
        assert isinstance(screen, BoxScreen)
        original = screen.load
        count = [0]

        def counting() -> Any:
            count[0] += 1
            return original()

        screen.load = counting  # type: ignore[method-assign]
        await pilot.press("r")  # a load now; each one re-arms the next tick at the new interval
        await pilot.pause(0.8)
        loads.append(count[0])
        await press(pilot, "full_stop")
        settled = count[0]
        await pilot.pause(0.8)
        loads.append(count[0] - settled)

    drive(tui_home, script)
    assert loads[0] >= 2  # re-armed after each load
    assert loads[1] <= 1  # paused: at most the load already in flight


def test_the_palette_offers_places_and_the_screens_actions_the_role_may_take(tui_home: Path) -> None:
    titles: dict[str, set[str]] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4")
        titles[app.me.role] = {c.title for c in app.get_system_commands(app.screen)}

    drive(tui_home, script, os_user="vic")
    drive(tui_home, script, os_user="mel")
    assert {"Go to pulse", "Go to deployments", "deployments: filter"} <= titles["viewer"]
    assert "Go to audit" not in titles["viewer"] and "deployments: canary weight" not in titles["viewer"]
    assert {"Go to audit", "deployments: canary weight"} <= titles["ml-engineer"]


def test_a_hidden_screen_stops_loading_and_reloads_when_shown_again(tui_home: Path) -> None:
    counts: dict[str, list[int]] = {"jobs": [], "deployments": []}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        app.refresh_s = 0.05

        def counted(screen: Any) -> list[int]:
            calls = [0]
            original = screen.load

            def load() -> Any:
                calls[0] += 1
                return original()

            screen.load = load
            return calls

        await press(pilot, "5")
        jobs = counted(app.screen)
        await press(pilot, "r")
        await press(pilot, "4")
        deployments = counted(app.screen)
        await press(pilot, "r")
        hidden_from = jobs[0]
        await pilot.pause(0.8)
        counts["jobs"] = [hidden_from, jobs[0]]
        counts["deployments"] = [deployments[0]]
        await press(pilot, "5")
        counts["jobs"].append(jobs[0])

    drive(tui_home, script)
    before, after, shown_again = counts["jobs"]
    assert after - before <= 1  # at most the load in flight when it was hidden
    assert counts["deployments"][0] >= 3  # the visible screen kept refreshing meanwhile
    assert shown_again > after  # shown again: a fresh load at once
