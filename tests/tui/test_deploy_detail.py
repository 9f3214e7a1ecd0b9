"""The Deployments screen's detail panel: shadow-vs-primary disagreement from the prediction log, the stored A/B verdict.

Requests are answered by the template's real models (churn:1 primary, churn:2 canary) and go through the
real serving sidecar (`Sidecar.run` over encoded frames, as a worker sends them): it writes each answer to
the log and runs the shadow model over it, logging the shadow's answer under the same request id, exactly
as `mlbox serve` does. The expected disagreement is computed here with pandas from the Parquet files the
sidecar wrote, independently of the console's DuckDB query. The A/B verdict and the quality are
`mlbox monitor ab` and `mlbox monitor quality`'s own code path over labels ingested as `mlbox labels ingest` does.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from textual.pilot import Pilot

from mlbox.console.deployment import compare
from mlbox.console.service import Console
from mlbox.monitor.window import Window
from mlbox.serve.labels import ingest_labels
from mlbox.serve.predlog.sidecar import Sidecar, Signatures
from mlbox.serve.predlog.wire import Record, encode_frame
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.serve.runtime import ModelCache
from mlbox.serve.validation import encode_rows
from mlbox.tui.app import MlboxApp
from mlbox.tui.deploypanel import DeploymentPanel, ab_text, quality_text
from mlbox.tui.screens.deployments import DeploymentsScreen

from ..conftest import OS_USER
from ._pilot import drive, press
from .conftest import open_box

HOUR = 3600.0
MODELS = {"primary": "churn:1", "canary": "churn:2"}


def request_rows(rng: np.random.Generator, n: int) -> list[dict[str, float]]:
    # near the decision boundary, so that churn:1 and churn:2 disagree on some rows
    return [{f"x{i}": round(float(rng.normal(scale=0.6)), 4) for i in range(3)} for _ in range(n)]


def truth(row: dict[str, float], rng: np.random.Generator) -> int:
    return int(row["x0"] + 0.5 * row["x1"] + 0.3 * rng.logistic() > 0)


def serve(home: Path, seed: int = 1) -> list[tuple[str, str, int]]:
    """Answer requests with the real models and log them through the real sidecar with churn:2 as shadow.

    Returns (request id, variant, label) of the single-row requests answered in the last day.
    """
    rng = np.random.default_rng(seed)
    now = time.time()
    records: list[Record] = []
    shadows: list[tuple[int, str]] = []
    labelled: list[tuple[str, str, int]] = []
    with open_box(home) as box:
        box.deployments.shadow("churn_api", "churn:2", "mel")
        models = ModelCache(box.registry, 1)
        for i in range(330):
            variant = "canary" if i % 3 == 0 else "primary"
            old = i >= 300  # answered 30 hours ago: outside the panel's day
            rows = request_rows(rng, 3 if i % 7 == 0 else 1)
            model = models.get(MODELS[variant])
            outputs = model.outputs(model.predict(encode_rows(model.signature, rows, "rows", levels=True)))
            ts = now - (30 * HOUR if old else float(rng.uniform(60, 20 * HOUR)))
            error = "ValidationError: x0 is not a number" if i % 50 == 49 else None
            records.append(Record(ts, f"req-{i:05d}", "churn_api", model.ref, variant, False, 3.0, None,
                                  orjson.dumps(rows).decode(), None if error else orjson.dumps(outputs).decode(), error))  # fmt: skip
            if error is None:
                shadows.append((len(records) - 1, "churn:2"))
                if len(rows) == 1 and not old:
                    labelled.append((f"req-{i:05d}", variant, truth(rows[0], rng)))
        records.append(records[1])  # logged twice (a worker resends what a restarted sidecar had not written)
        registry = box.registry
        log = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600, signature_of=Signatures(registry).get)
        sidecar = Sidecar(log, ModelCache(registry, 1), lambda line: None)
        sidecar.run(io.BytesIO(encode_frame(records, shadows)))  # stdin closes: shadows run, the log is flushed
        assert sidecar.counts["churn_api"]["predictions"] == len(shadows)  # every shadow ran
    return labelled


def expected_shadow(home: Path) -> tuple[int, int, float]:
    """(requests, rows, share of rows whose top class differs) from the log files, with pandas and numpy."""
    log = pd.concat([pd.read_parquet(p) for p in sorted((home / "predictions" / "churn_api").rglob("*.parquet"))])
    since = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=24)
    log = log[log.ts >= since]
    primary = log[(log.variant == "primary") & ~log.shadow & (log.model == "churn:1") & log.error.isna()]
    shadow = log[log.shadow & (log.model == "churn:2")]
    pairs = primary.drop_duplicates("request_id").merge(shadow.drop_duplicates("request_id"), on="request_id")
    differ, rows = 0, 0
    for a, b in zip(pairs.outputs_x, pairs.outputs_y, strict=True):
        for pa, pb in zip(json.loads(a), json.loads(b), strict=True):
            rows += 1
            ka, kb = list(pa), list(pb)
            differ += ka[int(np.argmax([pa[k] for k in ka]))] != kb[int(np.argmax([pb[k] for k in kb]))]
    return len(pairs), rows, differ / rows


def label_and_check(home: Path, labelled: list[tuple[str, str, int]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Labels for the day's single-row answers, then the stored A/B verdict and quality, as `mlbox monitor` runs them."""
    path = home / "labels.csv"
    path.write_text("request_id,label\n" + "".join(f"{r},{y}\n" for r, _, y in labelled))
    with open_box(home) as box:
        ingest_labels(box.db, box.audit, box.paths.predictions, "churn_api", path, "mel")
        ab = box.monitor.ab("churn_api", Window.parse(), actor="mel", rounds=500)
        quality = box.monitor.quality("churn_api", Window.parse(), actor="mel")
    return ab, quality


def detail_of(home: Path, name: str = "churn_api", os_user: str = OS_USER) -> dict[str, Any]:
    with open_box(home, os_user) as box:
        return Console(box, box.identity.actor_for_os_user(os_user)).deployment_detail(name)


def panel_text(app: MlboxApp) -> str:
    return app.screen.query_one(DeploymentPanel).plain


def test_the_shadow_disagreement_is_the_share_of_rows_whose_class_differs_from_the_primarys(tui_home: Path) -> None:
    labelled = serve(tui_home)
    ab, quality = label_and_check(tui_home, labelled)
    requests, rows, share = expected_shadow(tui_home)
    detail = detail_of(tui_home, os_user="vic")  # a viewer may read it: `deploy status` and `monitor history`

    assert json.loads(json.dumps(detail, allow_nan=False)) == detail  # what the management API sends, unchanged
    shadow = detail["shadow"]
    assert (shadow["model"], shadow["primary"], shadow["task"]) == ("churn:2", "churn:1", "classification")
    # the canary's answers (also churn:2, always agreeing), the old, failed and twice-logged ones are left out
    assert (shadow["requests"], shadow["rows"]) == (requests, rows) and rows > requests > 150
    assert shadow["disagreement"] == pytest.approx(share, abs=1e-12) and 0 < share < 0.5
    assert shadow["window"]["last_s"] == 24 * HOUR

    assert detail["ab"]["verdict"] == ab["verdict"] and detail["ab"]["metric"] == "accuracy"
    assert detail["ab"]["rows"] == ab["primary"]["n"] + ab["canary"]["n"] > 200
    assert (detail["ab"]["ci_low"], detail["ab"]["ci_high"]) == (ab["ci_low"], ab["ci_high"])
    assert detail["quality"]["variants"]["primary"]["metrics"] == quality["variants"]["primary"]["metrics"]

    seen: dict[str, str] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4")
        seen["panel"] = panel_text(app)
        panel = app.screen.query_one(DeploymentPanel)
        seen["title"] = str(panel.border_title)
        # at 80x24 the panel sits whole above the footer, under a table that still shows rows
        seen["fits"] = panel.region.bottom <= 23 and app.screen.query_one("#table").region.height >= 5

    drive(tui_home, script, os_user="vic", size=(80, 24))
    lines = seen["panel"].splitlines()
    assert seen["title"] == "churn_api" and seen["fits"]
    assert lines[0] == f"shadow  churn:2 vs primary churn:1: {share:.1%} disagree ({rows:,} rows, 24h)"
    glyph = {"canary better": "✓", "canary worse": "✗"}.get(ab["verdict"], "…")
    assert lines[1] == f"A/B     {ab_text(detail['ab'])}"
    assert lines[1].startswith(f"A/B     {glyph} {ab['verdict']}") and f"({detail['ab']['rows']:,} rows)" in lines[1]
    assert "95% CI [" in lines[1]
    acc = quality["variants"]["primary"]["metrics"]["accuracy"]
    labelled_primary = quality["variants"]["primary"]["labelled"]
    assert lines[2].startswith(f"quality accuracy: primary {acc:.3g} ({labelled_primary:,} labelled) · canary ")


def test_a_regression_shadow_is_compared_by_the_mean_absolute_difference(tui_home: Path) -> None:
    """`compare` on records written by the real writer: numeric answers, a shorter shadow answer, a request
    the shadow never answered, and one outside the window."""
    rng = np.random.default_rng(7)
    now = time.time()
    records, pairs = [], []
    for i in range(40):
        n = int(rng.integers(1, 4))
        a, b = rng.normal(size=n).round(6).tolist(), rng.normal(size=n).round(6).tolist()
        ts = now - (48 * HOUR if i == 0 else float(rng.uniform(1, 10 * HOUR)))
        if i == 1:
            b = b[:-1] if n > 1 else []  # a shadow answer with a row fewer: only the rows both answered count
        records.append(Record(ts, f"r{i}", "price_api", "price:1", "primary", False, 1.0, None, "[]", json.dumps(a), None))
        if i != 2:  # no shadow answer for r2
            records.append(Record(ts + 0.5, f"r{i}", "price_api", "price:2", "shadow", True, 1.0, None, "[]", json.dumps(b), None))
            if i != 0:
                pairs += list(zip(a, b, strict=False))
    with open_box(tui_home) as box:
        writer = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
        writer.extend(records)
        writer.close()
        files = sorted(box.paths.predictions.joinpath("price_api").rglob("*.parquet"))
    since = pd.Timestamp.now(tz="UTC").to_pydatetime() - pd.Timedelta(hours=24)
    until = pd.Timestamp.now(tz="UTC").to_pydatetime()
    found = compare(files, "price_api", "price:2", "price:1", since, until)
    diffs = np.abs(np.array([p[0] for p in pairs]) - np.array([p[1] for p in pairs]))
    assert found["task"] == "regression" and found["requests"] == 38  # r0 is old, r2 has no shadow answer
    assert found["rows"] == len(diffs) and found["disagreement"] == pytest.approx(float(diffs.mean()), rel=1e-12)
    assert compare([], "price_api", "price:2", "price:1", since, until) == {
        "task": None, "requests": 0, "rows": 0, "disagreement": None}  # fmt: skip


def test_without_a_shadow_or_checks_the_panel_says_dash_and_follows_the_selection(tui_home: Path) -> None:
    with open_box(tui_home) as box:
        box.deployments.create("fraud_api", "churn:2", "mel")
        box.deployments.shadow("fraud_api", "churn:1", "mel")
    assert detail_of(tui_home) == {"deployment": "churn_api", "shadow": None, "ab": None, "quality": None}
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4")
        screen = app.screen
        assert isinstance(screen, DeploymentsScreen)
        seen["first"] = panel_text(app)
        await press(pilot, "down")
        seen["second"] = panel_text(app), str(screen.query_one(DeploymentPanel).border_title)
        loaded = dict(screen.details)
        await press(pilot, "up")  # seen a moment ago: shown from what was loaded, not read again
        seen["back"] = panel_text(app), screen.details == loaded
        await press(pilot, "r")  # `r` reads it again
        seen["reloaded"] = screen.details["churn_api"][0] > loaded["churn_api"][0]

    drive(tui_home, script, os_user="vic", size=(80, 24))
    assert seen["first"] == "shadow  –\nA/B     –\nquality –"
    assert seen["second"] == ("shadow  churn:1 vs primary churn:2: no answers of both in the last 24h\nA/B     –\nquality –",
                              "fraud_api")  # fmt: skip
    assert seen["back"] == (seen["first"], True) and seen["reloaded"]



@pytest.mark.parametrize(("verdict", "glyph"), [("canary better", "✓"), ("canary worse", "✗"),
                                               ("no difference detected", "…"), ("not enough labels (about 90 more needed)", "…")])
def test_an_ab_verdict_reads_as_glyph_and_word(verdict: str, glyph: str) -> None:
    ab = {"verdict": verdict, "metric": "accuracy", "difference": 0.031, "ci_low": 0.012, "ci_high": 0.05,
          "confidence": 0.95, "rows": 1560}  # fmt: skip
    assert ab_text(ab) == f"{glyph} {verdict}: accuracy +0.031, 95% CI [+0.012, +0.05] (1,560 rows)"
    assert ab_text({"verdict": verdict, "difference": None, "rows": None}) == f"{glyph} {verdict}"


def test_a_regression_quality_reads_its_rmse() -> None:
    quality = {"task": "regression", "variants": {
        "canary": {"labelled": 40, "metrics": {"rmse": 1.25}}, "primary": {"labelled": 1200, "metrics": {"rmse": 1.5}}}}
    assert quality_text(quality) == "rmse: primary 1.5 (1,200 labelled) · canary 1.25 (40)"


def test_a_tie_goes_to_the_class_listed_first_as_the_servers_shadow_counter_decides(tui_home: Path) -> None:
    from mlbox.serve.shadow import agrees

    now = time.time()
    answers = [  # (primary's row, shadow's row)
        ({"0": 0.5, "1": 0.5}, {"1": 0.6, "0": 0.4}),  # tie: class 0 against 1, they differ
        ({"0": 0.5, "1": 0.5}, {"0": 0.7, "1": 0.3}),  # tie: class 0 against 0, they agree
        ({"no": 0.2, "yes": 0.8}, {"no": 0.1, "yes": 0.9}),
    ]
    records = []
    for i, (a, b) in enumerate(answers):
        records.append(Record(now - 60, f"t{i}", "tie_api", "m:1", "primary", False, 1.0, None, "[]", json.dumps([a]), None))
        records.append(Record(now - 59, f"t{i}", "tie_api", "m:2", "shadow", True, 1.0, None, "[]", json.dumps([b]), None))
    with open_box(tui_home) as box:
        writer = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
        writer.extend(records)
        writer.close()
        files = sorted(box.paths.predictions.joinpath("tie_api").rglob("*.parquet"))
    until = pd.Timestamp.now(tz="UTC").to_pydatetime()
    found = compare(files, "tie_api", "m:2", "m:1", until - pd.Timedelta(hours=24), until)
    assert [agrees([a], [b]) for a, b in answers] == [False, True, True]
    assert (found["task"], found["rows"], found["disagreement"]) == ("classification", 3, pytest.approx(1 / 3))
