"""The prediction log, a page at a time: `mlbox deploy log`, the console's `predictions`, the TUI's screen.

Records are written by the real log writer (`PredictionLog`, one Parquet file per flush, cataloged in
meta.db) into 40 files whose time ranges overlap their neighbours', with ties (a shadow's record at its
primary's time, same request id). The expected order is read back from the files with pandas,
independently of the DuckDB page query. The masking test trains a real model on feature views whose
`region` is marked pii, so its logged inputs hold a protected field.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from mlbox.config import load_settings
from mlbox.errors import NotFound, UsageError
from mlbox.monitor.logpage import Cursor, answer, window_floor
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.tui.app import MlboxApp
from mlbox.tui.local import LocalClient
from mlbox.tui.predlog import PredictionsScreen

from ..conftest import OS_USER
from ._pilot import drive, keys_shown, press, table_rows
from .conftest import ENVIRON, features_box, open_box

FILES, PER_FILE = 40, 50
MODELS = {"primary": "churn:1", "canary": "churn:2", "shadow": "churn:2"}


def write_log(home: Path, deployment: str = "churn_api", start: float | None = None) -> None:
    """FILES flushes of PER_FILE records each; file k spans [60k, 60k + 90) seconds: neighbours overlap."""
    start = time.time() - 3 * 3600 if start is None else start
    with open_box(home) as box:
        writer = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
        n = 0
        for k in range(FILES):
            batch = []
            for j in range(PER_FILE):
                ts = start + 60 * k + (j * 90 / PER_FILE)
                variant = "canary" if n % 4 == 0 else "shadow" if n % 4 == 1 else "primary"
                request = f"req-{n - 1 if variant == 'shadow' else n:05d}"  # a shadow answers its primary's request
                if variant == "shadow":
                    ts = batch[-1].ts  # ... at the same time, by the same model: a tie broken by the variant
                rows = [{"x0": float(n), "x1": 0.5, "x2": -1.0}] * (2 if n % 9 == 0 else 1)
                error = "422 validation: x0 is not a number" if n % 17 == 0 and variant != "shadow" else None
                outputs = None if error else orjson.dumps([{"0": 0.25, "1": 0.75}] * len(rows)).decode()
                batch.append(Record(ts, request, deployment, MODELS[variant], variant, variant == "shadow", 2.5, None,
                                    orjson.dumps(rows).decode(), outputs, error))  # fmt: skip
                n += 1
            writer.extend(batch)
            writer.flush()
        writer.close()


def expected(home: Path, deployment: str = "churn_api") -> pd.DataFrame:
    """Every logged record of `deployment`, in page order (ts, request id, model, variant; newest first), by pandas."""
    files = sorted((home / "predictions" / deployment).rglob("*.parquet"))
    frame = pd.concat([pd.read_parquet(f, columns=["ts", "request_id", "model", "variant", "error"]) for f in files])
    return frame.sort_values(["ts", "request_id", "model", "variant"], ascending=False).reset_index(drop=True)


def keys(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(r["request_id"], r["model"], r["variant"]) for r in records]


def want_keys(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    return list(zip(frame.request_id, frame.model, frame.variant, strict=True))


def every_page(client: Any, limit: int, **narrow: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All records, page after page, and the pages' answers."""
    records, pages, before = [], [], None
    while True:
        got = client.predictions("churn_api", limit, before, **narrow)
        pages.append(got)
        records += got["records"]
        before = got["next"]
        if before is None:
            return records, pages


@pytest.fixture(scope="module")
def logged(tui_template: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("predictions") / "box"
    shutil.copytree(tui_template.home, home)
    write_log(home)
    return home


def local(home: Path, os_user: str = OS_USER, **environ: str) -> LocalClient:
    return LocalClient(load_settings(home, environ={**ENVIRON, **environ}), os_user=os_user)


# the pages -----------------------------------------------------------------------------------------


def test_pages_walk_the_whole_log_newest_first_once_each(logged: Path) -> None:
    want = expected(logged)
    records, pages = every_page(local(logged), 120)
    assert len(records) == len(want) == FILES * PER_FILE
    assert keys(records) == want_keys(want)
    assert [r["ts"] for r in records] == sorted((r["ts"] for r in records), reverse=True)
    assert [len(p["records"]) for p in pages] == [120] * 16 + [80] and pages[-1]["next"] is None
    assert {p["total"] for p in pages} == {FILES * PER_FILE}
    first = records[0]
    assert first["inputs"] == [{"x0": float(FILES * PER_FILE - 1), "x1": 0.5, "x2": -1.0}]
    assert first["outputs"] == [{"0": 0.25, "1": 0.75}] and first["latency_ms"] == 2.5


def test_a_page_reads_only_the_files_that_can_hold_it(logged: Path) -> None:
    """120 records need three files of 50, plus the neighbours that overlap their time: never all 40."""
    client = local(logged)
    first = client.predictions("churn_api", 120)
    assert 3 <= first["files"] <= 5
    deep = client.predictions("churn_api", 120, first["next"])
    assert 3 <= deep["files"] <= 6


def test_the_floor_counts_only_files_wholly_before_the_cursor() -> None:
    files = [  # newest last record first
        {"rows": 10, "min_ts": "2026-01-01T00:05", "max_ts": "2026-01-01T00:09"},  # reaches past the cursor
        {"rows": 10, "min_ts": "2026-01-01T00:03", "max_ts": "2026-01-01T00:06"},
        {"rows": 10, "min_ts": "2026-01-01T00:01", "max_ts": "2026-01-01T00:04"},
        {"rows": 10, "min_ts": "2026-01-01T00:00", "max_ts": "2026-01-01T00:02"},
    ]
    assert window_floor(files, "2026-01-01T00:07", 15) == ("2026-01-01T00:01", 20)
    assert window_floor(files, "2026-01-01T00:07", 10) == ("2026-01-01T00:03", 10)
    assert window_floor(files, None, 10) == ("2026-01-01T00:05", 10)
    assert window_floor(files, "2026-01-01T00:07", 31) == (None, 30)  # not enough: no bound, every older file is read


def test_a_cursor_keeps_its_place_while_newer_records_arrive(logged: Path, tmp_path: Path) -> None:
    home = tmp_path / "box"
    shutil.copytree(logged, home)
    client = local(home)
    first = client.predictions("churn_api", 100)
    before = client.predictions("churn_api", 100, first["next"])
    write_log(home, start=time.time() - 60)  # newer records, after the first page was read
    after = client.predictions("churn_api", 100, first["next"])
    assert keys(after["records"]) == keys(before["records"]) and after["next"] == before["next"]
    assert after["total"] == 2 * FILES * PER_FILE


@pytest.mark.parametrize(("narrow", "keep"), [
    ({"variant": "canary"}, lambda f: f.variant == "canary"),
    ({"variant": "shadow"}, lambda f: f.variant == "shadow"),
    ({"errors": True}, lambda f: f.error.notna()),
    ({"variant": "primary", "errors": True}, lambda f: (f.variant == "primary") & f.error.notna()),
])  # fmt: skip
def test_a_narrowed_log_pages_through_exactly_its_records(logged: Path, narrow: dict[str, Any], keep: Any) -> None:
    want = expected(logged)
    want = want[keep(want)]
    records, pages = every_page(local(logged), 50, **narrow)
    assert keys(records) == want_keys(want) and len(records) > 0
    assert pages[-1]["next"] is None


def test_bad_pages_are_one_clear_error(logged: Path) -> None:
    client = local(logged)
    with pytest.raises(UsageError, match="not a page cursor"):
        client.predictions("churn_api", 10, "bm90LWEtY3Vyc29y")
    with pytest.raises(UsageError, match="unknown variant"):
        client.predictions("churn_api", 10, None, "blue")
    with pytest.raises(UsageError, match="limit must be 1..1000"):
        client.predictions("churn_api", 0)
    with pytest.raises(NotFound, match="no deployment 'nope'"):
        client.predictions("nope", 10)
    with pytest.raises(UsageError, match="not a page cursor"):  # a time no datetime holds: refused, not a 500
        client.predictions("churn_api", 10, "f_________8AYQBt")
    for cursor in (Cursor(1_796_000_000_123_456, "req|odd\"id", "churn:1", "primary"), Cursor(-5, "r", "m:1", "blue")):
        assert Cursor.parse(cursor.text()) == cursor
    assert cursor.moment.microsecond == 999_995 and len(Cursor(1_796_000_000_123_456, "3f43c58e1514000000018e",
                                                               "churn:12", "shadow").text()) <= 56  # fmt: skip


def test_a_deployment_without_records_is_an_empty_last_page(tui_home: Path) -> None:
    got = local(tui_home).predictions("churn_api", 10)
    assert got["records"] == [] and got["next"] is None and got["total"] == 0 and got["files"] == 0


def test_an_answer_reads_as_its_top_class_or_value() -> None:
    assert answer([{"0": 0.2, "1": 0.8}]) == "1 0.80"
    assert answer([{"no": 0.6, "yes": 0.4}, {"no": 0.1, "yes": 0.9}]) == "no 0.60 +1 rows"
    assert answer([12.5]) == "12.5" and answer(None) == "" and answer([]) == ""


def test_mlbox_deploy_log_pages_with_the_cursor_it_prints(logged: Path, cli: Any) -> None:
    home = ["--home", str(logged)]
    first = cli(*home, "--json", "deploy", "log", "churn_api", "-n", "7")
    assert first.exit_code == 0, first.stdout
    page1 = first.json()
    assert len(page1["records"]) == 7 and page1["total"] == FILES * PER_FILE
    second = cli(*home, "--json", "deploy", "log", "churn_api", "-n", "7", "--before", page1["next"]).json()
    want = expected(logged)
    assert keys(page1["records"] + second["records"]) == want_keys(want[:14])
    shown = cli(*home, "deploy", "log", "churn_api", "-n", "3", "--variant", "canary")
    assert shown.exit_code == 0 and "canary" in shown.stdout and "next page: --before " in shown.stdout
    bad = cli(*home, "deploy", "log", "churn_api", "--before", "zzz")
    assert isinstance(bad.exception, UsageError)


# the screen ----------------------------------------------------------------------------------------


def title(app: MlboxApp) -> str:
    return str(app.screen.query_one("#title", Static).render())


def drawn(app: MlboxApp) -> str:
    """The screen as its SVG export draws it, as text."""
    import re

    svg = app.export_screenshot()
    return "".join(t.replace("&#160;", " ") for t in re.findall(r">([^<]*)</text>", svg))


def pane(app: MlboxApp) -> str:
    return str(app.screen.query_one("#record", Static).render())


def test_the_screen_pages_narrows_and_shows_the_highlighted_record(logged: Path) -> None:
    want = expected(logged)
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4")
        assert "predictions" in keys_shown(app)
        await press(pilot, "p")
        assert isinstance(app.screen, PredictionsScreen)
        seen["title1"] = title(app)
        seen["page1"] = table_rows(app)
        await press(pilot, "down")
        seen["pane"] = pane(app)
        seen["drawn"] = drawn(app)
        await press(pilot, "n", "n")
        seen["title3"], seen["page3"] = title(app), table_rows(app)
        await press(pilot, "b")
        seen["page2"] = table_rows(app)
        await press(pilot, "v")
        seen["canary?"] = (title(app), table_rows(app))  # v: primary first
        await press(pilot, "v", "e")
        seen["errors"] = (title(app), table_rows(app))
        await press(pilot, "escape")
        seen["back"] = type(app.screen).__name__

    drive(logged, script, size=(100, 30))
    assert "churn_api: page 1, records 1–100 of 2,000 logged, newest first  n: older" in seen["title1"]
    # what the terminal shows, header and footer included (a widget's `loading` overlay once blanked them)
    assert "mlbox › deployments › churn_api › predictions" in seen["drawn"] and " n older  b newer" in seen["drawn"]
    assert [r["request_id"] for r in seen["page1"]] == list(want.request_id[:100])
    assert [r["request_id"] for r in seen["page2"]] == list(want.request_id[100:200])
    assert [r["request_id"] for r in seen["page3"]] == list(want.request_id[200:300])
    assert "page 3, records 201–300 of 2,000 logged" in seen["title3"] and "b: newer" in seen["title3"]
    second = want.iloc[1]
    assert f"request {second.request_id}  {second.variant} {second.model}" in seen["pane"]
    assert "x0=" in seen["pane"] and "→  0=0.25, 1=0.75" in seen["pane"]
    primary_title, primary_rows = seen["canary?"]
    assert "records 1–100 (primary) of 2,000 logged" in primary_title and {r["variant"] for r in primary_rows} == {"primary"}
    errors_title, error_rows = seen["errors"]
    assert "(canary errors only)" in errors_title and error_rows
    assert {r["variant"] for r in error_rows} == {"canary"} and all(r["error"] for r in error_rows)
    assert seen["back"] == "DeploymentsScreen"


class SlowClient(LocalClient):
    """A client whose log pages take a while (a remote box over a slow link), and fail when told to."""

    fail = False

    def predictions(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        time.sleep(0.3)
        if self.fail:
            raise UsageError("the link went down")
        return super().predictions(*args, **kwargs)


def test_paging_keys_wait_for_the_page_being_read_and_a_failed_read_keeps_the_page(logged: Path) -> None:
    import asyncio

    from ._pilot import settle

    want = expected(logged)
    client = SlowClient(load_settings(logged, environ=ENVIRON), os_user=OS_USER)
    app = MlboxApp(client, refresh_s=60)
    seen: dict[str, Any] = {}

    async def go() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await press(pilot, "4", "p")
            await pilot.press("n", "n", "n")  # while page 2 is read: the second and third wait for nothing
            await settle(pilot)
            seen["title"], seen["rows"] = title(app), table_rows(app)
            client.fail = True
            await pilot.press("n")
            await pilot.pause(0.8)  # the read fails (settle would re-raise the worker's error)
            await pilot.pause()
            seen["failed"] = (title(app), table_rows(app), list(app.screen.cursors))  # type: ignore[attr-defined]

    asyncio.run(go())
    assert "page 2, records 101–200" in seen["title"]
    assert [r["request_id"] for r in seen["rows"]] == list(want.request_id[100:200])
    failed_title, failed_rows, cursors = seen["failed"]
    assert "page 2, records 101–200" in failed_title and failed_rows == seen["rows"] and len(cursors) == 2


# protected inputs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pii_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A box whose customer_profile.region is pii, a model fed it, a deployment and a logged request."""
    from threadpoolctl import threadpool_limits

    from mlbox.project import init_project
    from mlbox.train.runner import train
    from mlbox.train.spec import parse_spec

    home = tmp_path_factory.mktemp("pii-log") / "box"
    init_project(home, "tabular-classification")
    spec = home / "features.yaml"
    spec.write_text(spec.read_text().replace("Emirate of the billing address.}", "Emirate of the billing address., pii: true}"))
    box = features_box(home)
    try:
        fs = box.features
        raw = {"experiment": "pii", "model": "pii_churn", "task": "classification", "target": "churned", "flavor": "sklearn",
               "data": {"labels": "data/labels.csv", "timestamp": "event_ts",
                        "features": ["customer_profile:age", "customer_profile:region"]}, "device": "cpu", "params": {}}  # fmt: skip
        # the same columns from a plain file: a shadow whose own lineage names no protected field
        pd.DataFrame({"age": [30, 41, 29, 55] * 50, "region": ["ajman", "dubai"] * 100, "churned": [0, 1, 1, 0] * 50}
                     ).to_parquet(home / "plain.parquet")  # fmt: skip
        plain = {**raw, "model": "pii_plain", "data": {"path": "plain.parquet"}}
        with threadpool_limits(limits=1):
            for spec_ in (raw, plain):
                train(parse_spec(spec_, "pii spec", home), store=fs, tracking=box.tracking, registry=box.registry,
                      actor=OS_USER, register=True)  # fmt: skip
        box.identity.add_user(OS_USER, "vic", "viewer", os_user="vic")
        box.deployments.create("pii_api", "pii_churn:1", OS_USER)
        box.deployments.shadow("pii_api", "pii_plain:1", OS_USER)
        writer = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
        rows = orjson.dumps([{"age": 41, "region": "ajman"}, {"age": 29, "region": "dubai"}]).decode()
        now, answer_ = time.time(), orjson.dumps([{"0": 0.9, "1": 0.1}] * 2).decode()
        writer.extend([
            Record(now, "req-1", "pii_api", "pii_churn:1", "primary", False, 1.0,
                   orjson.dumps([{"customer_id": 1001}, {"customer_id": 1002}]).decode(), rows, answer_, None),
            Record(now - 1, "req-1", "pii_api", "pii_plain:1", "shadow", True, 1.0, None, rows, answer_, None),
            Record(now - 2, "req-2", "pii_api", "pii_churn:1", "primary", False, 1.0,  # sticky by a protected input
                   orjson.dumps([{"region": "ajman"}]).decode(), orjson.dumps([{"age": 41, "region": "ajman"}]).decode(),
                   orjson.dumps([{"0": 0.9, "1": 0.1}]).decode(), None),
            Record(now - 3, "req-3", "pii_api", "pii_churn:1", "primary", False, 1.0, None, "[]", None,
                   "422 validation: field 'region' must be one of 'abu dhabi', 'ajman', got 'sharjah'"),
        ])  # fmt: skip
        writer.close()
    finally:
        box.close()
    return home


def inputs_as(home: Path, os_user: str, **environ: str) -> dict[str, Any]:
    return local(home, os_user, **environ).predictions("pii_api", 10)


def test_a_reader_without_read_pii_gets_the_protected_inputs_masked(pii_home: Path) -> None:
    admin, viewer = inputs_as(pii_home, OS_USER), inputs_as(pii_home, "vic")
    assert admin["records"][0]["inputs"] == [{"age": 41, "region": "ajman"}, {"age": 29, "region": "dubai"}]
    assert admin["disclosure"] == "raw" and admin["masked"] == []
    assert viewer["records"][0]["inputs"] == [{"age": 41, "region": "***"}, {"age": 29, "region": "***"}]
    assert viewer["disclosure"] == "mask" and viewer["masked"] == ["region"]
    assert viewer["records"][0]["entity"] == [{"customer_id": 1001}, {"customer_id": 1002}]


def test_a_shadow_record_a_sticky_entity_and_an_error_text_hide_the_protected_values_too(pii_home: Path) -> None:
    """The shadow's own lineage names no protected field, but its record holds the primary's inputs; a sticky key
    that is a protected input is an entity value; a validation error quotes the value sent."""
    admin, viewer = ({(r["request_id"], r["variant"]): r for r in inputs_as(pii_home, user)["records"]}
                     for user in (OS_USER, "vic"))  # fmt: skip
    assert admin[("req-1", "shadow")]["inputs"][0]["region"] == "ajman"
    assert viewer[("req-1", "shadow")]["inputs"] == [{"age": 41, "region": "***"}, {"age": 29, "region": "***"}]
    assert admin[("req-2", "primary")]["entity"] == [{"region": "ajman"}]
    assert viewer[("req-2", "primary")]["entity"] == [{"region": "***"}]
    assert "sharjah" in admin[("req-3", "primary")]["error"]
    assert viewer[("req-3", "primary")]["error"] == "422 validation: (withheld: the message may quote a protected input)"
    assert not any("ajman" in json.dumps(r) or "sharjah" in json.dumps(r) for r in viewer.values())


def test_under_refuse_the_protected_inputs_are_left_out_and_named(pii_home: Path) -> None:
    got = inputs_as(pii_home, "vic", MLBOX_PRIVACY_PROTECTED_READS="refuse")
    assert got["records"][0]["inputs"] == [{"age": 41}, {"age": 29}]
    assert got["refused"] == ["region"] and got["masked"] == []


def test_the_screen_shows_a_viewer_the_masked_inputs(pii_home: Path) -> None:
    seen: dict[str, str] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4", "p")
        seen["pane"] = pane(app)
        seen["hidden"] = str(app.screen.query_one("#hidden", Static).render())

    drive(pii_home, script, os_user="vic")
    assert "region=***" in seen["pane"] and "ajman" not in seen["pane"]
    assert "protected inputs masked: region" in seen["hidden"]

