"""Monitoring attacked from the outside: hostile feature names and levels, garbage log records, broken log files,
windows and policy files meant to crash it, the monitoring route probed without rights, webhooks aimed inside.

Every case runs on a real box: models trained from plain Parquet files, a log written by the real
`PredictionLog` writer, the real CLI entry point and the ASGI app in-process. The rule under test is
always the same: a clear status or one `mlbox.errors` exception (one red line, exit 2/3 on the CLI, a
4xx JSON envelope over HTTP), never a raw DuckDB/numpy traceback and never a wrong answer.
"""

from __future__ import annotations

import asyncio
import http.server
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import pandas as pd
import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import MlboxError, UsageError
from mlbox.flavors.signature import Signature
from mlbox.monitor.window import Window
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

from ..conftest import OS_USER

N = 1200
# numeric feature names that are SQL, JSON, format-string and HTML syntax, or collide once prefixed (`n.` + `a` = `n.a`)
HOSTILE = ['x"); DROP TABLE t; --', "it's", "back\\slash", "{br}ace", "sp ace", "ünï", "n.a", "a", "<b>bold</b>"]
CAT = "c'at\"{}"  # a categorical feature whose name is quote soup
LEVELS = ['q"uote', "line\nbreak", "(unseen)", "it's", "<i>lvl</i>"]  # quotes, a newline, HTML, the unseen bin's own label


def hostile_frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({name: rng.normal(size=n) for name in HOSTILE})
    out[HOSTILE[0]] += shift
    out[CAT] = rng.choice(LEVELS, size=n)
    out["y"] = ((out[HOSTILE[0]] + out[HOSTILE[1]]) > 0).astype(int)
    return out


def register(b: Box, home: Path, model: str, frame: pd.DataFrame) -> None:
    frame.to_parquet(home / f"{model}.parquet")
    raw = {"experiment": model, "model": model, "task": "classification", "target": "y", "flavor": "xgboost",
           "data": {"path": f"{model}.parquet"}, "params": {"n_estimators": 5, "max_depth": 2}, "device": "cpu"}  # fmt: skip
    train(parse_spec(raw, "spec", home), store=None, tracking=b.tracking, registry=b.registry, actor=OS_USER, register=True)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    home = tmp_path_factory.mktemp("monitor-hostile") / "box"
    home.mkdir()
    b = Box.create(load_settings(home, environ={}), OS_USER)
    b.actor = OS_USER
    register(b, home, "h", hostile_frame(N, 0))
    b.deployments.create("hd", "h:1", OS_USER)
    yield b
    b.close()


def write_log(b: Box, inputs: list[str], *, model: str = "h:1", typed: bool = True, ts: float | None = None,
              deployment: str = "hd") -> list[BaseException]:  # fmt: skip
    """One logged request per JSON text in `inputs`, through the real writer; the writer's reported errors."""
    errors: list[BaseException] = []
    try:
        signature: Signature | None = Signature.from_dict(b.registry.get(model).signature)
    except MlboxError:
        signature = None  # a model the registry never heard of: the writer logs it without typed columns
    log = PredictionLog(b.paths.predictions, b.db, flush_seconds=3600, on_error=errors.append,
                        signature_of=(lambda _r: signature) if typed else None)  # fmt: skip
    now = ts or time.time()
    records = [
        Record(now, f"r{i}", deployment, model, "primary", False, 1.0, None, text, orjson.dumps([{"0": 0.4, "1": 0.6}]).decode(), None)
        for i, text in enumerate(inputs)
    ]
    log.extend(records)
    log.flush()
    log.close()
    return errors


def frame_inputs(frame: pd.DataFrame) -> list[str]:
    return [orjson.dumps([row]).decode() for row in frame.drop(columns=["y"]).to_dict(orient="records")]


def clear_log(b: Box) -> None:
    b.db.execute("DELETE FROM prediction_batches")


def checked(b: Box, **window: Any) -> Any:
    return b.monitor.check("hd", Window.parse(**(window or {"last": "1h"})), record=False)


# hostile names and levels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("typed", [True, False], ids=["typed-columns", "json-fallback"])
def test_hostile_names_are_read_exactly(box: Box, typed: bool) -> None:
    """Every hostile feature is read with its own values: the one shifted feature drifts, nothing else does."""
    clear_log(box)
    sent = hostile_frame(N, 1, shift=1.5)
    sent["a"] -= 1.5  # `a` moves, `n.a` does not: the two are not one column read twice
    assert write_log(box, frame_inputs(sent), typed=typed) == []
    result = checked(box)
    primary = result.variants["primary"]
    assert primary.rows == N
    assert set(primary.features) == {*HOSTILE, CAT}
    assert {n for n, f in primary.features.items() if f.drifted} == {HOSTILE[0], "a"}
    assert primary.features["n.a"].as_dict()["tests"]["ks"]["p_value"] > 0.01
    for name in HOSTILE:
        assert primary.features[name].rows == N and primary.features[name].null_rate == 0.0
    cat = primary.features[CAT]
    assert cat.status == "ok" and cat.unseen_rate == 0.0 and cat.null_rate == 0.0
    assert sorted(cat.as_dict()["histogram"]["bins"]) == sorted(LEVELS)


UNSEEN_BUG = (
    "BUG: mlbox/monitor/stats.py (categorical compare, labels = tuple(ref_levels) + (UNSEEN,)) appends the bin label "
    "'(unseen)' even when the reference has a level of that name: the histogram then has two '(unseen)' bins"
)


def test_hostile_levels_and_the_unseen_label_stay_distinct(box: Box) -> None:
    """A level literally named `(unseen)` and genuinely unseen levels must not share one histogram bin label."""
    clear_log(box)
    sent = hostile_frame(400, 2)
    sent[CAT] = np.where(np.arange(400) % 2 == 0, "never seen", "(unseen)")
    write_log(box, frame_inputs(sent))
    cat = checked(box).variants["primary"].features[CAT].as_dict()
    assert cat["unseen_rate"] == pytest.approx(0.5)
    bins = cat["histogram"]["bins"]
    assert len(bins) == len(set(bins)), bins


def test_case_colliding_feature_names(box: Box) -> None:
    """`A` and `a` are two Parquet columns but one DuckDB name: refuse at registration, or check them correctly."""
    home = box.paths.home
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"A": rng.normal(size=300), "a": rng.normal(size=300) + 5, "B": rng.normal(size=300)})
    frame["y"] = (frame.A > 0).astype(int)
    try:
        register(box, home, "cc", frame)
    except UsageError:  # refused clearly at registration: fine
        return
    box.deployments.create("ccd", "cc:1", OS_USER)
    try:
        errors = write_log(box, frame_inputs(frame), model="cc:1", deployment="ccd")
        assert errors == [], errors  # the typed columns could not be written
        result = box.monitor.check("ccd", Window.parse(last="1h"), record=False)
        features = result.variants["primary"].features
        assert result.variants["primary"].rows == 300 and not result.drifted
        assert features["a"].rows == 300 and features["A"].rows == 300
    finally:
        box.db.execute("DELETE FROM deployments WHERE name = 'ccd'")


def test_report_escapes_hostile_names(box: Box, cli_run: Any, tmp_path: Path) -> None:
    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(N, 4, shift=1.5)))
    out = tmp_path / "r.html"
    r = cli_run("--home", str(box.paths.home), "monitor", "report", "hd", "--out", str(out), "--last", "1h")
    assert r.exit_code == 0, r.stderr
    page = out.read_text()
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<i>lvl</i>" not in page
    assert "DROP TABLE" in page  # shown, as text


# garbage in the log -----------------------------------------------------------------------------------------

GOOD_ROW = {**{name: 0.1 for name in HOSTILE}, CAT: "it's"}
GARBAGE = {
    "object-not-list": orjson.dumps(GOOD_ROW).decode(),
    "json-null": "null",
    "not-json": "{{{not json",
    "list-of-numbers": "[1, 2, 3]",
    "missing-features": orjson.dumps([{HOSTILE[0]: 0.2}]).decode(),
    "strings-for-numerics": orjson.dumps([{**GOOD_ROW, HOSTILE[0]: "abc", "a": "1e5"}]).decode(),
    "numbers-for-categorical": orjson.dumps([{**GOOD_ROW, CAT: 42}]).decode(),
    "nan-infinity-tokens": '[{"a": NaN, "sp ace": Infinity, "n.a": -Infinity}]',
    "beyond-float32": orjson.dumps([{**GOOD_ROW, "a": 1e300, "n.a": -1e39}]).decode(),
    "nested-objects": orjson.dumps([{**GOOD_ROW, "a": {"x": 1}, CAT: ["l"]}]).decode(),
}


@pytest.mark.parametrize(
    "case",
    list(GARBAGE),
    ids=list(GARBAGE),
)
def test_garbage_records_give_a_result_or_a_clear_error(box: Box, case: str) -> None:
    """One garbage record among good ones: a clear mlbox error, or a result that still counts every good row."""
    clear_log(box)
    good = frame_inputs(hostile_frame(300, 5))
    # the sidecar types only rows the server validated; a foreign writer's file has no typed columns
    write_log(box, [*good, GARBAGE[case]], typed=case != "list-of-numbers")
    try:
        result = checked(box)
    except MlboxError as exc:
        assert "Error:" not in exc.message, exc.message  # an mlbox sentence, not a wrapped DuckDB message
        return
    primary = result.variants["primary"]
    assert primary.rows in (300, 301), primary.rows
    assert not primary.features[HOSTILE[2]].drifted  # the good rows are read as they were sent
    for f in primary.features.values():
        assert f.status in ("ok", "drift", "insufficient", "empty") and f.reason


def test_a_record_from_an_unknown_model_is_left_out(box: Box) -> None:
    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(300, 6)))
    write_log(box, frame_inputs(hostile_frame(50, 7, shift=9.0)), model="ghost:7")
    primary = checked(box).variants["primary"]
    assert primary.rows == 300 and not primary.drifted


READS = [{"last": "1h"}, pytest.param({"last": "1h", "last_rows": 100}, id="last-rows")]  # pyarrow, then DuckDB


@pytest.mark.parametrize("window", READS)
def test_a_cataloged_file_that_is_corrupt(box: Box, window: dict[str, Any]) -> None:
    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(300, 8)))
    path = box.paths.home / box.db.scalar("SELECT path FROM prediction_batches ORDER BY id DESC LIMIT 1")
    data = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(data[: len(data) // 2])  # truncated: the footer is gone
    with pytest.raises(MlboxError) as caught:
        checked(box, **window)
    assert "Error:" not in caught.value.message and path.name in str(caught.value)


def test_a_cataloged_file_with_corrupt_pages(box: Box) -> None:
    """The footer intact, the column data garbled: still an mlbox error naming the file."""
    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(300, 8)))
    path = box.paths.home / box.db.scalar("SELECT path FROM prediction_batches ORDER BY id DESC LIMIT 1")
    data = bytearray(path.read_bytes())
    for i in range(8, len(data) // 2, 7):
        data[i] ^= 0x5A
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(MlboxError) as caught:
        checked(box)
    assert path.name in str(caught.value)


@pytest.mark.parametrize("window", READS)
def test_a_cataloged_file_that_was_deleted(box: Box, window: dict[str, Any]) -> None:
    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(300, 9)))
    path = box.paths.home / box.db.scalar("SELECT path FROM prediction_batches ORDER BY id DESC LIMIT 1")
    path.unlink()
    with pytest.raises(MlboxError) as caught:
        checked(box, **window)
    assert "Error:" not in caught.value.message and path.name in str(caught.value)


# windows via the real CLI --------------------------------------------------------------------------------------


def one_red_line(r: Any, code: int) -> None:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout and "internal error" not in r.stderr
    lines = r.stderr.strip().splitlines()
    if lines and lines[0].startswith("Usage:"):  # an option's own bounds (typer `min=`): Click's usage block
        assert lines[-1].startswith("Error: Invalid value"), r.stderr
    else:
        assert 1 <= len(lines) <= 2, r.stderr


@pytest.mark.parametrize(
    "args",
    [["--last", "0s"], ["--last", "-5m"], ["--last", "1y"], ["--last-rows", "0"], ["--last-rows", "-3"],
     ["--since", "yesterday"], ["--since", "2026-13-40"], ["--until", "2020-01-01", "--since", "2021-01-01"]],
    ids=["last-0s", "last-negative", "last-bad-unit", "last-rows-0", "last-rows-negative", "since-words", "since-impossible",
         "until-before-since"],
)  # fmt: skip
def test_bad_windows_are_one_red_line(box: Box, cli_run: Any, args: list[str]) -> None:
    one_red_line(cli_run("--home", str(box.paths.home), "monitor", "check", "hd", *args), 2)


HUGE_WINDOW = (
    "BUG: a duration past year 1 is accepted (mlbox.types.parse_duration / Window) and Window.bounds raises "
    "OverflowError: date value out of range ('internal error', exit 1); a policy `window: 99999999w` is stored and "
    "crashes every round. Fix: Window.__post_init__ refuses last_s over (now - datetime.min) or a cap such as 100 years"
)


def test_an_enormous_window(box: Box, cli_run: Any) -> None:
    """`--last 99999999w` reaches before year 1: refuse it clearly, or read the whole log."""
    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(100, 10)))
    r = cli_run("--home", str(box.paths.home), "--json", "monitor", "check", "hd", "--last", "99999999w", "--no-record")
    if r.exit_code == 2:
        one_red_line(r, 2)
    else:
        assert r.exit_code == 0, r.stderr[-800:]
        assert r.json()["variants"]["primary"]["rows"] == 100


def test_a_window_in_the_future_is_empty(box: Box, cli_run: Any) -> None:
    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(100, 11)))
    r = cli_run("--home", str(box.paths.home), "--json", "monitor", "check", "hd", "--since", "2999-01-01", "--no-record")
    assert r.exit_code == 0, r.stderr
    primary = r.json()["variants"]["primary"]
    assert primary["rows"] == 0 and {f["status"] for f in primary["features"].values()} == {"empty"}


# policy files meant to hurt ----------------------------------------------------------------------------------------

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
) + "deployments:\n  hd: {window: *i}\n"  # fmt: skip
BOMBS = {
    "billion-laughs": LAUGHS,
    "deep-nesting": "deployments:\n  hd: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep-mapping": "deployments:\n  hd: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "huge-numbers": "deployments:\n  hd:\n    drift: {dataset_share: 1e999}\n    alerts: {timeout_s: 99999999999999999999999}\n",
    "python-object": "deployments:\n  hd: !!python/object/apply:os.system ['touch /tmp/mlbox-pwned']\n",
    "python-name": "deployments: !!python/name:os.system\n",
    "non-string-keys": "deployments:\n  ? [1, 2]\n  : {}\n",
    "bad-deployment-name": "deployments:\n  '../../etc': {}\n",
    "window-zero": "deployments:\n  hd: {window: 0s}\n",
    "last-rows-bool": "deployments:\n  hd: {window: {last_rows: true}}\n",
}


@pytest.mark.parametrize(
    "case",
    list(BOMBS),
    ids=list(BOMBS),
)
def test_policy_bombs_are_refused_in_one_line(box: Box, cli_run: Any, tmp_path: Path, case: str) -> None:
    path = tmp_path / "monitoring.yaml"
    path.write_text(BOMBS[case])
    started = time.perf_counter()
    try:
        r = cli_run("--home", str(box.paths.home), "monitor", "apply", str(path))
        assert time.perf_counter() - started < 5
        assert not Path("/tmp/mlbox-pwned").exists()
        assert box.monitor.records.policy("hd") is None
        one_red_line(r, 2)
    finally:
        box.monitor.records.remove_policy("hd")


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch /tmp/mlbox-pwned']", "!!python/name:os.system"])
def test_python_tags_are_never_constructed(box: Box, cli_run: Any, tmp_path: Path, tag: str) -> None:
    path = tmp_path / "monitoring.yaml"
    path.write_text(f"deployments:\n  hd: {tag}\n")
    r = cli_run("--home", str(box.paths.home), "monitor", "apply", str(path))
    assert r.exit_code == 2 and "Traceback" not in r.stderr and "not valid YAML" in r.stderr
    assert not Path("/tmp/mlbox-pwned").exists() and box.monitor.records.policy("hd") is None


def test_an_absurd_schedule_is_refused_or_harmless(box: Box, cli_run: Any, tmp_path: Path) -> None:
    from mlbox.loop import schedule_due

    path = tmp_path / "monitoring.yaml"
    path.write_text("deployments:\n  hd: {schedule: 99999999999999999999w}\n")
    home = str(box.paths.home)
    try:
        r = cli_run("--home", home, "monitor", "apply", str(path))
        if r.exit_code == 2:
            return one_red_line(r, 2)
        assert r.exit_code == 0, r.stderr
        assert schedule_due(box, now=time.time() + 10 * 365 * 86400) == []  # never due, never a crash
        assert cli_run("--home", home, "--json", "monitor", "policy", "show", "hd").exit_code == 0
    finally:
        box.monitor.records.remove_policy("hd")


@pytest.mark.parametrize("window", ["99999999w", {"last": "99999999w"}, "999999999999999999999999w"])
def test_a_policy_window_beyond_time_is_refused(box: Box, window: Any) -> None:
    from mlbox.loop import run_policy, set_policies
    from mlbox.monitor.policy import parse_policy

    try:
        policy = parse_policy("hd", {"window": window}, "test")
    except UsageError:
        return
    set_policies(box, [policy], OS_USER)
    try:
        run_policy(box, "hd", OS_USER)  # a stored policy must give a round, not OverflowError
    finally:
        box.monitor.records.remove_policy("hd")


# the monitoring route --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def route(box: Box) -> Iterator[tuple[Any, dict[str, str]]]:
    from mlbox.api.app import build_app
    from mlbox.api.context import ServeContext

    box.identity.add_user(OS_USER, "watcher", "viewer")
    tokens = {"viewer": box.identity.create_token(OS_USER, "watcher", never_expires=True)[1]}
    ctx = ServeContext(load_settings(box.paths.home, environ={}))
    ctx.start()
    try:
        yield build_app(ctx), tokens
    finally:
        ctx.close()


def get(app: Any, url: str, headers: dict[str, str] | None = None) -> Any:
    import httpx

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mlbox.test") as client:
            return await client.get(url, headers=headers or {})

    return asyncio.run(go())


def envelope(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and body["error"]["message"]
    assert "Traceback" not in response.text
    error: dict[str, Any] = body["error"]
    return error


def test_route_needs_a_token(route: Any) -> None:
    app, tokens = route
    envelope(get(app, "/v1/deployments/hd/monitoring"), 401)
    envelope(get(app, "/v1/deployments/hd/monitoring", {"Authorization": "Bearer not-a-token"}), 401)
    envelope(get(app, "/v1/deployments/hd/monitoring", {"Authorization": "Basic YWxpY2U6eA=="}), 401)
    ok = get(app, "/v1/deployments/hd/monitoring", {"Authorization": f"Bearer {tokens['viewer']}"})
    assert ok.status_code == 200 and ok.json()["deployment"] == "hd"


@pytest.mark.parametrize(
    "name",
    ["..%2F..%2Fetc%2Fpasswd", "..", "%2e%2e", "x" * 5000, quote("ünï"), "hd%00", "hd%20", quote("hd'; DROP TABLE deployments; --"),
     "HD", "%25"],
    ids=["traversal", "dotdot", "encoded-dotdot", "very-long", "unicode", "nul", "space", "sql", "case", "percent"],
)  # fmt: skip
def test_route_with_hostile_names(route: Any, box: Box, name: str) -> None:
    app, tokens = route
    r = get(app, f"/v1/deployments/{name}/monitoring", {"Authorization": f"Bearer {tokens['viewer']}"})
    assert r.status_code in (400, 404), (r.status_code, r.text[:300])
    envelope(r, r.status_code)
    assert box.db.scalar("SELECT count(*) FROM deployments WHERE name = 'hd'") == 1


# webhooks aimed inside ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/x", "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
     "http://0.0.0.0/", "http://10.1.2.3/", "file:///etc/passwd", "gopher://example.com/", "http://user:pw@example.com/"],
)  # fmt: skip
def test_webhooks_to_inside_addresses_are_refused_at_parse(url: str) -> None:
    from mlbox.monitor.policy import parse_policy

    with pytest.raises(UsageError):
        parse_policy("hd", {"alerts": {"webhook": url}}, "test")


@pytest.mark.parametrize("url", ["http://localhost:9/hook", "http://0x7f000001:9/", "http://2130706433:9/", "http://127.1:9/"])
def test_names_resolving_inside_do_not_crash_a_round(box: Box, url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A host name that resolves to loopback passes the syntax check; the POST is refused and the round goes on, logged."""
    from mlbox.loop import run_policy, set_policies
    from mlbox.monitor.policy import parse_policy

    server_hits: list[str] = []
    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(N, 12, shift=2.0)))
    try:
        policy = parse_policy("hd", {"window": "1h", "alerts": {"webhook": url}}, "test")
    except UsageError:
        return  # refused at parse: fine too
    set_policies(box, [policy], OS_USER)
    try:
        with caplog.at_level(logging.WARNING, logger="mlbox.monitor"):
            outcome = run_policy(box, "hd", OS_USER)
        assert outcome["drifted"] and not server_hits
        refused = [r.getMessage() for r in caplog.records if "webhook not delivered" in r.getMessage()]
        assert len(refused) == 1 and "loopback" in refused[0], refused
    finally:
        box.monitor.records.remove_policy("hd")


def test_redirects_are_not_followed() -> None:
    from mlbox.monitor.alerts import post_webhook

    hits: list[str] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            self.do_POST()

        def log_message(self, *args: Any) -> None:
            pass

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
    inner = f"http://127.0.0.1:{target.server_address[1]}/admin"

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.send_response(307)
            self.send_header("Location", inner)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    outer = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for s in (target, outer):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        result = post_webhook(f"http://127.0.0.1:{outer.server_address[1]}/hook", {"event": "drift"}, allow_private=True, timeout_s=2)
        assert not result.ok and result.status == 307 and "not followed" in (result.error or "")
        assert hits == []
    finally:
        for s in (target, outer):
            s.shutdown()
            s.server_close()


def test_a_non_ascii_webhook_is_refused_and_never_crashes_a_post() -> None:
    from mlbox.monitor.alerts import post_webhook
    from mlbox.monitor.policy import parse_policy

    with pytest.raises(UsageError, match="not ASCII"):
        parse_policy("hd", {"window": "1h", "alerts": {"webhook": "http://127.0.0.1:9/hoök", "allow_private": True}}, "test")
    outcome = post_webhook("http://127.0.0.1:9/hoök", {"x": 1}, allow_private=True)  # a URL that reached it anyway
    assert not outcome.ok and "not ASCII" in (outcome.error or "")


def test_route_serves_strict_json_for_all_null_features(route: Any, box: Box) -> None:
    """A stored check with NaN statistics (an all-null feature) is served as strict JSON, nulls not NaN tokens."""
    import json

    app, tokens = route
    clear_log(box)
    rows = [{k: v for k, v in GOOD_ROW.items() if k != "a"} for _ in range(200)]  # `a` never sent: all null
    write_log(box, [orjson.dumps([r]).decode() for r in rows])
    stored = box.monitor.check("hd", Window.parse(last="1h")).as_dict()
    assert stored["variants"]["primary"]["features"]["a"]["status"] == "insufficient"
    r = get(app, "/v1/deployments/hd/monitoring", {"Authorization": f"Bearer {tokens['viewer']}"})
    assert r.status_code == 200

    def refuse(token: str) -> None:
        raise AssertionError(f"non-JSON token {token} in the monitoring response")

    body = json.loads(r.text, parse_constant=refuse)
    assert body["drift"]["checked_at"] == stored["checked_at"]
    assert body["drift"]["variants"]["primary"]["features"]["a"]["null_rate"] == 1.0


@pytest.mark.parametrize("name", ["../../etc/passwd", "x" * 500, "ünï", "hd'; DROP TABLE deployments; --", "", "HD"],
                         ids=["traversal", "long", "unicode", "sql", "empty", "case"])  # fmt: skip
@pytest.mark.parametrize("command", ["check", "history", "serving", "report"])
def test_cli_with_hostile_deployment_names(box: Box, cli_run: Any, tmp_path: Path, name: str, command: str) -> None:
    extra = ["--out", str(tmp_path / "r.html")] if command == "report" else []
    r = cli_run("--home", str(box.paths.home), "monitor", command, name, *extra)
    assert r.exit_code in (2, 3), (r.exit_code, r.stderr)
    one_red_line(r, r.exit_code)
    assert not (tmp_path / "r.html").exists()
    assert box.db.scalar("SELECT count(*) FROM deployments WHERE name = 'hd'") == 1


def test_an_absurd_cooldown_does_not_kill_the_loop(box: Box) -> None:
    from mlbox.loop import run_policy, set_policies
    from mlbox.monitor.policy import parse_policy

    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(N, 14, shift=2.0)))
    try:
        policy = parse_policy("hd", {"window": "1h", "on_drift": {"action": "retrain", "cooldown": "99999999w"}}, "test")
    except UsageError:
        return
    set_policies(box, [policy], OS_USER)
    box.monitor.records.add_action("hd", "retrain", "enqueued", "an earlier drift", {})
    try:
        outcome = run_policy(box, "hd", OS_USER)
        assert outcome["actions"] == [] and [h["action"] for h in outcome["held"]] == ["retrain"]
    finally:
        box.monitor.records.remove_policy("hd")
        box.db.execute("DELETE FROM monitor_actions WHERE deployment = 'hd'")


def test_an_absurd_last_rows_is_refused_or_works(box: Box) -> None:
    """`last_rows: 10**23` is beyond BIGINT: refuse it, or read the whole window (never a DuckDB/JSON overflow)."""
    from mlbox.loop import run_policy, set_policies
    from mlbox.monitor.policy import parse_policy

    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(100, 15)))
    try:
        policy = parse_policy("hd", {"window": {"last_rows": 10**23}}, "test")
    except UsageError:
        return
    try:
        set_policies(box, [policy], OS_USER)
        outcome = run_policy(box, "hd", OS_USER)
        assert not outcome["drifted"]
        assert box.monitor.history("hd")[-1]["variants"]["primary"]["rows"] == 100
    finally:
        box.monitor.records.remove_policy("hd")


def test_an_env_webhook_never_echoes_the_variable(caplog: pytest.LogCaptureFixture) -> None:
    from mlbox.monitor.alerts import alert
    from mlbox.monitor.policy import parse_policy

    with pytest.raises(UsageError, match="contains WEBHOOK") as refused:  # a policy may not name the server's secrets
        parse_policy("hd", {"alerts": {"webhook": {"$env": "MLBOX_TOKEN"}}}, "test")
    assert "\n" not in refused.value.message
    policy = parse_policy("hd", {"alerts": {"webhook": {"$env": "CHURN_WEBHOOK_URL"}}}, "test")
    with caplog.at_level(logging.WARNING, logger="mlbox.monitor"):
        outcome = alert("drift", "hd", {"reason": "x0 moved"}, policy.alerts, environ={"CHURN_WEBHOOK_URL": "tok_s3cr3t_value"})
    assert outcome is not None and not outcome.ok
    assert "s3cr3t" not in " ".join(r.getMessage() for r in caplog.records) and "s3cr3t" not in (outcome.error or "")


def test_an_absurd_last_rows_on_the_cli(box: Box, cli_run: Any) -> None:
    clear_log(box)
    write_log(box, frame_inputs(hostile_frame(100, 16)))
    r = cli_run("--home", str(box.paths.home), "--json", "monitor", "check", "hd", "--last", "1h", "--no-record",
                "--last-rows", str(10**23))  # fmt: skip
    if r.exit_code == 2:
        one_red_line(r, 2)
    else:
        assert r.exit_code == 0, r.stderr
        assert r.json()["variants"]["primary"]["rows"] == 100
