"""The prediction log of a real `mlbox serve`: every answered request (and its shadow copy) is written as Parquet
on a clean shutdown, cataloged in meta.db, and `mlbox labels ingest` matches labels to it by request id.

One server runs with serve.log_flush_seconds = 3600, so nothing is written before shutdown: the
backlog gauge must count every record, and SIGTERM must write them all. Deployment `logged`
serves churn:1 with churn:2 as a 30% canary and churn_bc:1 as shadow — a model trained without
segment `a`, so its category levels ([b, c]) differ from the primary's ([a, b, c]).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlbox.flavors import onnx as onnx_files
from mlbox.flavors.signature import Signature

from ..conftest import OS_USER
from .conftest import Template, copy_box, meta_rows, mlbox, open_box, sample_rows, start_server, wait_for

N = 60


@dataclass(frozen=True)
class Logged:
    home: Path
    sent: list[list[dict[str, Any]]]  # rows of each request
    answers: list[dict[str, Any]]  # each response body
    metrics: dict[str, float]  # /metrics just before shutdown
    batches_before_shutdown: int
    exit_code: int
    shutdown_s: float

    @property
    def request_ids(self) -> list[str]:
        return [a["request_id"] for a in self.answers]


@pytest.fixture(scope="module")
def logged(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    home = copy_box(serve_template, tmp_path_factory.mktemp("predlog") / "box")
    with open_box(home) as box:
        box.deployments.create("logged", "churn:1", OS_USER)
        box.deployments.canary("logged", "churn:2", 30, OS_USER)
        box.deployments.shadow("logged", "churn_bc:1", OS_USER)
    server = start_server(home, serve_template.tokens, MLBOX_SERVE_LOG_FLUSH_SECONDS="3600")
    try:
        rows = sample_rows(2 * N, seed=5)
        sent, answers = [], []
        for i in range(N):
            batch = rows[2 * i : 2 * i + 1 + i % 2]  # one or two rows per request: one record per request
            headers = {**server.auth(), **({"X-Request-Id": f"client-{i}"} if i < 5 else {})}
            response = server.client.post("/v1/deployments/logged/predict", json={"rows": batch}, headers=headers)
            assert response.status_code == 200, response.text
            sent.append(batch)
            answers.append(response.json())
        wait_for(lambda: server.metrics().get('mlbox_shadow_predictions_total{deployment="logged"}') == N, 30, "the shadow copies")
        metrics = server.metrics()
        before = len(meta_rows(home, "SELECT id FROM prediction_batches"))
        started = time.monotonic()
        code = server.stop()
        return Logged(home, sent, answers, metrics, before, code, time.monotonic() - started)
    finally:
        server.terminate()


def log_frame(home: Path, deployment: str = "logged") -> pd.DataFrame:
    files = sorted(p for p in (home / "predictions" / deployment).rglob("*.parquet") if "labels" not in p.parts)
    return pd.concat([pq.read_table(p).to_pandas() for p in files], ignore_index=True)


def test_backlog_gauge_counts_every_unwritten_record(logged: Logged) -> None:
    assert logged.metrics["mlbox_prediction_log_backlog"] == 2 * N  # N answers + N shadow copies
    assert logged.metrics["mlbox_prediction_log_dropped"] == 0
    assert logged.batches_before_shutdown == 0


def test_sigterm_shuts_down_cleanly_and_writes_every_record(logged: Logged) -> None:
    print(f"MEASURED clean shutdown in {logged.shutdown_s:.2f} s, exit code {logged.exit_code}")
    assert logged.exit_code == 0
    batches = meta_rows(logged.home, "SELECT deployment, path, rows FROM prediction_batches")
    assert {b["deployment"] for b in batches} == {"logged"}
    assert sum(b["rows"] for b in batches) == 2 * N
    for b in batches:  # each cataloged file exists, read-only, with the rows the catalog says
        path = logged.home / b["path"]
        assert pq.read_metadata(path).num_rows == b["rows"]
        assert not path.stat().st_mode & 0o222
    assert not list((logged.home / "predictions").rglob(".tmp-*"))


def test_parquet_holds_every_answer_as_returned(logged: Logged) -> None:
    frame = log_frame(logged.home)
    answered = frame[~frame.shadow]
    shadows = frame[frame.shadow]
    assert sorted(answered.request_id) == sorted(logged.request_ids)  # every id, each once
    assert len(set(logged.request_ids)) == N
    assert logged.request_ids[:5] == [f"client-{i}" for i in range(5)]
    by_id = answered.set_index("request_id")
    variants: Counter[str] = Counter()
    for rows, answer in zip(logged.sent, logged.answers, strict=True):
        record = by_id.loc[answer["request_id"]]
        assert (record.model, record.variant, record.deployment) == (answer["model"], answer["variant"], "logged")
        assert json.loads(record.inputs) == rows
        assert json.loads(record.outputs) == answer["predictions"]
        assert record.latency_ms > 0 and pd.isna(record.error)
        assert pd.Timestamp(record.ts).tzinfo is not None
        variants[answer["variant"]] += 1
    assert set(variants) == {"primary", "canary"}
    assert sorted(shadows.request_id) == sorted(logged.request_ids)
    assert set(shadows.variant) == {"shadow"} and set(shadows.model) == {"churn_bc:1"}


def test_labels_ingest_matches_every_request(logged: Logged, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": logged.request_ids, "label": [i % 2 for i in range(N)]}).to_csv(labels, index=False)
    cli = mlbox(logged.home, "--json", "labels", "ingest", "logged", str(labels))
    assert cli.returncode == 0, cli.stderr
    result = json.loads(cli.stdout)
    assert (result["rows"], result["matched"], result["mode"]) == (N, N, "request_id")
    stored = pq.read_table(logged.home / result["path"]).to_pandas()
    assert sorted(stored.request_id) == sorted(logged.request_ids)
    (batch,) = meta_rows(logged.home, "SELECT rows, matched FROM label_batches WHERE deployment = 'logged'")
    assert (batch["rows"], batch["matched"]) == (N, N)


def test_shadow_predicts_from_inputs_encoded_for_itself(logged: Logged, tmp_path: Path) -> None:
    """The shadow's logged answer is what the shadow model gives for the logged inputs, encoded by its own signature.

    churn_bc:1 knows segments [b, c]; the primary and canary know [a, b, c]. Fed the primary's encoding,
    the shadow would read b as c and c as an unknown level.
    """
    with open_box(logged.home) as box:
        version = box.registry.get("churn_bc:1")
        onnx_file = box.registry.export("churn_bc:1", "onnx", tmp_path / "bc.onnx")[0]
    signature = Signature.from_dict(version.signature)
    assert signature.columns[-1].levels == ("b", "c")
    session = onnx_files.session(onnx_file, 1)
    shadows = log_frame(logged.home).query("shadow")
    for record in shadows.itertuples():
        rows = json.loads(record.inputs)
        expected = np.asarray(onnx_files.run(session, signature.encode(pd.DataFrame(rows))))
        got = np.array([[p["0"], p["1"]] for p in json.loads(record.outputs)])
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"shadow answer for {rows}")
