"""Runs compared side by side: `Console.run_detail` (console/runs.py) and the Runs screen's marks and comparison.

The template's two runs (churn max_depth 3, then 2) were trained by the conftest, each logging train and
valid loss at every boosting step; further runs are logged here through the tracking API (`ActiveRun`),
as a training script would.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from mlbox import clock
from mlbox.console.runs import MAX_POINTS, run_detail, subsample
from mlbox.console.service import Console
from mlbox.errors import PermissionDenied
from mlbox.tracking import store as tracking_store
from mlbox.tracking.run import ActiveRun
from mlbox.tui.app import MlboxApp
from mlbox.tui.compare import CompareScreen, CurvePlot, Series, curves, metric_keys
from mlbox.tui.screens.runs import RunsScreen
from mlbox.types import ROLES, Actor

from ..conftest import OS_USER
from ._pilot import cells, drive, make_app, press, settle
from .conftest import open_box


def log_run(home: Path, name: str, *, user: str = OS_USER, params: dict[str, Any] | None = None,
            curves: dict[str, list[float]] | None = None, tags: dict[str, Any] | None = None) -> str:  # fmt: skip
    """A finished run logged through the tracking API, as a script does; its id."""
    with open_box(home) as box:
        run_id = box.tracking.create_run("churn", name, user, params=params or {}, tags=tags or {})
        with ActiveRun(box.tracking, run_id) as run:
            for key, values in (curves or {}).items():
                for step, value in enumerate(values):
                    run.log_metric(key, value, step)
    return run_id


def churn_runs(home: Path) -> list[dict[str, Any]]:
    with open_box(home) as box:
        return [r.as_dict() for r in box.tracking.runs("churn")]


def console(box: Any, role: str = "admin") -> Console:
    return Console(box, Actor(OS_USER, role))  # type: ignore[arg-type]


# console.runs.run_detail ---------------------------------------------------------------------------------------


def test_run_detail_holds_params_latest_metrics_and_each_history(tui_home: Path) -> None:
    deep, shallow = sorted(churn_runs(tui_home), key=lambda r: -int(r["params"]["max_depth"]))
    with open_box(tui_home) as box:
        detail = console(box).run_detail(deep["id"][:6])  # a unique prefix, as `mlbox runs show` takes
        history = box.tracking.metric_history(deep["id"], "valid_loss")
        latest = box.tracking.latest_metrics([deep["id"]])[deep["id"]]
    assert detail["id"] == deep["id"] and detail["name"] == deep["name"] and detail["status"] == "finished"
    assert detail["params"]["max_depth"] == 3 and detail["tags"]["flavor"] == "xgboost"
    assert detail["metrics"] == latest and set(detail["history"]) == set(latest)
    assert detail["history"]["valid_loss"] == [[s, v] for s, v in history] and len(history) == 5
    assert detail["history"]["accuracy"] == [[0, latest["accuracy"]]]
    assert "environment" not in detail  # package versions: not what a comparison shows
    assert json.loads(json.dumps(detail, allow_nan=False)) == detail  # what a remote TUI gets is the same dict


def test_run_detail_turns_nan_and_inf_into_null(tui_home: Path) -> None:
    run_id = log_run(tui_home, "odd", params={"alpha": math.nan, "beta": [1.0, math.inf]}, tags={"t": -math.inf},
                     curves={"loss": [1.0, math.nan, 0.5, math.inf]})  # fmt: skip
    with open_box(tui_home) as box:
        detail = console(box, "viewer").run_detail(run_id)
    assert detail["params"] == {"alpha": None, "beta": [1.0, None]} and detail["tags"] == {"t": None}
    assert detail["history"]["loss"] == [[0, 1.0], [1, None], [2, 0.5], [3, None]]
    assert detail["metrics"] == {"loss": None}  # the last step's value was inf
    assert json.loads(json.dumps(detail, allow_nan=False)) == detail


def test_a_long_history_is_subsampled_evenly_keeping_first_and_last(tui_home: Path) -> None:
    n = 5 * MAX_POINTS + 3
    run_id = log_run(tui_home, "long", curves={"loss": [1.0 / (i + 1) for i in range(n)]})
    with open_box(tui_home) as box:
        points = console(box).run_detail(run_id)["history"]["loss"]
    assert len(points) == MAX_POINTS
    assert points[0] == [0, 1.0] and points[-1] == [n - 1, 1.0 / n]
    steps = [s for s, _ in points]
    gaps = {b - a for a, b in zip(steps, steps[1:], strict=False)}
    assert steps == sorted(set(steps)) and gaps <= {5, 6}  # evenly spread: every 5th or 6th step
    assert all(v == 1.0 / (s + 1) for s, v in points)  # real points, not interpolated


def test_subsample_keeps_short_histories_whole() -> None:
    points = [(i, float(i)) for i in range(10)]
    assert subsample(points, 10) == points
    assert subsample(points, 3) == [(0, 0.0), (4, 4.0), (9, 9.0)]  # 4.5 rounds to even
    assert subsample(points, 2) == [(0, 0.0), (9, 9.0)]


def test_every_role_may_read_a_run_and_one_outside_the_table_is_refused(tui_home: Path) -> None:
    run_id = churn_runs(tui_home)[0]["id"]
    with open_box(tui_home) as box:
        for role in ROLES:  # `runs show` needs `read`, which every role holds
            assert console(box, role).run_detail(run_id)["id"] == run_id
        with pytest.raises(PermissionDenied):
            run_detail(console(box, "nobody"), run_id)
        denied = box.audit.entries(action="auth.denied", limit=1)
    assert [(e.actor, e.target, e.details["role"]) for e in denied] == [(OS_USER, "read", "nobody")]  # audited as the CLI does


@pytest.mark.slow
def test_a_remote_client_gets_the_same_detail_through_mlbox_serve(tui_home: Path) -> None:
    from mlbox.config import load_settings
    from mlbox.tui.local import LocalClient
    from mlbox.tui.remote import RemoteClient

    from ..serve.conftest import running_server
    from .conftest import ENVIRON

    odd = log_run(tui_home, "odd", params={"alpha": math.nan}, curves={"loss": [1.0, math.inf, 0.25]})
    with open_box(tui_home) as box:
        token = box.identity.create_token(OS_USER, "vic", never_expires=True)[1]
        ids = [r.id for r in box.tracking.runs()]
    with running_server(tui_home, {"viewer": token}) as server:
        remote = RemoteClient(server.url, token)
        local = LocalClient(load_settings(tui_home, environ=ENVIRON), token=token)
        for run_id in ids:
            assert remote.run_detail(run_id) == local.run_detail(run_id)
    assert local.run_detail(odd)["history"]["loss"] == [[0, 1.0], [1, None], [2, 0.25]]


# the Runs screen: marks and the comparison -------------------------------------------------------------------------


def compare_cells(app: MlboxApp) -> dict[str, list[str]]:
    screen = app.screen
    assert isinstance(screen, CompareScreen), screen
    table = screen.query_one("#compare", DataTable)
    return {str(row[0]): [str(c) for c in row[1:]] for row in (table.get_row_at(i) for i in range(table.row_count))}


def test_mark_two_runs_and_compare_them_side_by_side(tui_home: Path) -> None:
    shallow, deep = churn_runs(tui_home)  # newest first: max_depth 2 was trained last
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "2")
        assert isinstance(app.screen, RunsScreen)
        await press(pilot, "space", "down", "space")
        seen["marks"] = [row[0] for row in cells(app)]
        await press(pilot, "c")
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        seen["rows"] = compare_cells(app)
        plot = screen.query_one(CurvePlot)
        seen["plot"] = (plot.metric, [(s.label, s.marker, s.steps, s.values) for s in plot.series])
        seen["plot_size"] = (plot.size.width, plot.size.height)
        await press(pilot, "right_square_bracket")
        seen["next"] = plot.metric
        await press(pilot, "left_square_bracket")
        seen["back"] = plot.metric
        await press(pilot, "d")
        seen["differs"] = compare_cells(app)
        seen["title"] = str(screen.query_one("#title", Static).render())
        await press(pilot, "escape")
        seen["after"] = type(app.screen).__name__, [row[0] for row in cells(app)]

    drive(tui_home, script)
    assert seen["marks"] == ["✓A", "✓B"]
    rows = seen["rows"]
    assert rows["params.max_depth"] == ["≠", "2", "3"]  # A is the first marked: the newest run, max_depth 2
    assert rows["params.learning_rate"] == ["", "0.3", "0.3"]
    assert rows["name"] == ["≠", shallow["name"], deep["name"]] and rows["id"] == ["≠", shallow["id"], deep["id"]]
    assert rows["status"] == ["", "✓ finished", "✓ finished"]
    assert rows["metrics.accuracy"][0] == ("≠" if rows["metrics.accuracy"][1] != rows["metrics.accuracy"][2] else "")
    metric, series = seen["plot"]
    assert metric == "train_loss"  # the longest histories first (5 steps each), then by name
    with open_box(tui_home) as box:
        want = [[(s, v) for s, v in box.tracking.metric_history(r["id"], "train_loss")] for r in (shallow, deep)]
    assert [(m, list(zip(st, vs, strict=True))) for _, m, st, vs in series] == [("*", want[0]), ("+", want[1])]
    assert [label for label, *_ in series] == [f"A {shallow['name']}", f"B {deep['name']}"]  # named by their ids
    assert seen["plot_size"][0] > 40 and seen["plot_size"][1] >= 8  # 80x24: the plot shrinks but is there
    assert seen["next"] == "valid_loss" and seen["back"] == "train_loss"
    differs = seen["differs"]
    assert differs and all(marker == "≠" for marker, *_ in differs.values())  # `d`: only the rows that differ
    assert "params.max_depth" in differs and "params.learning_rate" not in differs
    assert f"{len(differs)} of {len(rows)} keys differ" in seen["title"] and "only differences" in seen["title"]
    assert seen["after"] == ("RunsScreen", ["✓A", "✓B"])  # esc went back to Runs, the marks kept


def test_a_third_mark_replaces_the_oldest_and_space_unmarks(tui_home: Path) -> None:
    log_run(tui_home, "third", params={"max_depth": 9})
    seen: list[list[str]] = []

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "2", "space", "down", "space", "down", "space")
        seen.append([row[0] for row in cells(app)])
        await press(pilot, "space")  # the selected run is marked: unmark it
        seen.append([row[0] for row in cells(app)])
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        seen.append(screen.marked)

    drive(tui_home, script)
    assert seen[0] == ["", "✓A", "✓B"]  # the first mark went to the third; the oldest left is now A
    assert seen[1] == ["", "✓A", ""]
    assert len(seen[2]) == 1


def test_compare_without_marks_shows_the_selected_run_alone(tui_home: Path) -> None:
    newest = churn_runs(tui_home)[0]
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "2", "c")
        seen["rows"] = compare_cells(app)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        seen["columns"] = len(screen.query_one("#compare", DataTable).columns)
        seen["series"] = len(screen.query_one(CurvePlot).series)

    drive(tui_home, script)
    assert seen["columns"] == 2 and seen["rows"]["id"] == [newest["id"]]  # key | A: no B, no differs column
    assert seen["rows"]["params.max_depth"] == ["2"] and seen["series"] == 1


def test_one_marked_run_is_compared_with_the_selected_one(tui_home: Path) -> None:
    shallow, deep = churn_runs(tui_home)
    other = log_run(tui_home, "no-curves", params={"max_depth": 2})  # newest now: first row
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "2", "space", "down", "down", "c")
        seen["rows"] = compare_cells(app)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        seen["series"] = [s.label[0] for s in screen.query_one(CurvePlot).series]

    drive(tui_home, script)
    rows = seen["rows"]
    assert rows["id"] == ["≠", other, deep["id"]] and rows["params.max_depth"] == ["≠", "2", "3"]
    assert rows["params.n_estimators"] == ["≠", "–", "5"]  # a param one run lacks
    assert seen["series"] == ["B"]  # A logged no curve of the metric: only B's is drawn
    assert shallow["id"] not in rows["id"]


def test_curves_leave_out_null_points_and_runs_without_the_metric() -> None:
    a = {"id": "a1b2c3d4e5", "name": "a1b2c3d4", "history": {"loss": [[0, 1.0], [1, None], [2, 0.5]], "acc": [[0, 0.9]]}}
    b = {"id": "f0e1d2c3b4", "name": "deeper", "history": {"acc": [[0, 0.8]]}}
    assert metric_keys([a, b]) == ["loss", "acc"]  # the longest history first
    assert curves([a, b], "loss") == [Series("A a1b2c3d4", "*", [0, 2], [1.0, 0.5])]
    assert curves([a, b], "acc") == [Series("A a1b2c3d4", "*", [0], [0.9]), Series("B deeper (f0e1d2c3)", "+", [0], [0.8])]


def test_only_a_running_run_is_read_again_on_the_refresh_tick(tui_home: Path) -> None:
    with open_box(tui_home) as box:  # running, by this live process: the reaper leaves it alone
        running = box.tracking.create_run("churn", "live", OS_USER)
        live = ActiveRun(box.tracking, running)
        live.log_metrics({"loss": 0.5}, step=1)
        live.flush()  # written, the run left running
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "2", "c")  # the newest: the running one
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        seen["running"] = screen.run_ids, screen._timer is not None
        await press(pilot, "escape", "down", "c")
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        seen["finished"] = screen.runs[0]["status"], screen._timer is None

    drive(tui_home, script)
    assert seen["running"] == ([running], True)
    assert seen["finished"] == ("finished", True)


def test_names_from_the_box_are_escaped(tui_home: Path) -> None:
    run_id = log_run(tui_home, "evil\x1b[31mred", curves={"loss\x1b]0;x\x07": [1.0, 0.5]})
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "2", "c")
        seen["rows"] = compare_cells(app)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        seen["labels"] = [s.label for s in screen.query_one(CurvePlot).series]
        seen["headers"] = [str(c.label) for c in screen.query_one("#compare", DataTable).columns.values()]

    drive(tui_home, script)
    assert seen["rows"]["id"] == [run_id]
    assert "\x1b" not in seen["headers"][1] and seen["headers"][1].startswith("A evil\\x1b")
    assert "\x1b" not in seen["rows"]["name"][0] and "\\x1b" in seen["rows"]["name"][0]
    assert all("\x1b" not in label and "\\x1b" in label for label in seen["labels"])


def test_the_keys_are_remappable_by_id() -> None:
    """A fresh process (this one imported the comparison already): the app's import makes its ids known."""
    import subprocess
    import sys

    code = "from mlbox.tui import keymap; print(sorted(keymap.bindings().items()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for pair in [("mlbox.runs.mark", "space"), ("mlbox.runs.compare", "c"), ("mlbox.compare.close", "escape"),
                 ("mlbox.compare.differs", "d"), ("mlbox.compare.prev_metric", "left_square_bracket"),
                 ("mlbox.compare.next_metric", "right_square_bracket")]:  # fmt: skip
        assert repr(pair) in out


# the picture -----------------------------------------------------------------------------------------------------


@pytest.fixture
def fixed_runs(tui_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, list[str]]]:
    """Two runs with fixed ids and times (the template's ids are random): what the snapshot shows."""
    assert os.environ.get("NO_COLOR") == "1"
    ids = iter(["a1b2c3d4e5f60718", "f0e1d2c3b4a59687"])
    monkeypatch.setattr(tracking_store, "uuid", SimpleNamespace(uuid4=lambda: SimpleNamespace(hex=next(ids))))
    moment = clock.parse_iso("2026-11-30T12:00:00Z")
    monkeypatch.setattr(clock, "now", lambda: moment)
    out = []
    for name, user, depth, rate, scale in (("baseline", "ana", 3, 0.3, 1.0), ("deeper", "mel", 6, 0.1, 0.8)):
        loss = [0.1 + scale * 0.6 / (1 + 0.4 * s) for s in range(40)]
        out.append(log_run(tui_home, name, user=user, params={"max_depth": depth, "learning_rate": rate, "seed": 7},
                           curves={"train_loss": loss, "valid_loss": [v + 0.02 for v in loss], "accuracy": [0.8 + 0.05 * scale]},
                           tags={"task": "classification"}))  # fmt: skip
    monkeypatch.undo()
    yield tui_home, out


def test_compare_120x36_viewer(fixed_runs: tuple[Path, list[str]], snap_compare: Any) -> None:
    home, ids = fixed_runs

    async def ready(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        pilot.app.push_screen(CompareScreen(ids))
        await settle(pilot)

    assert snap_compare(make_app(home, "vic"), terminal_size=(120, 36), run_before=ready)
