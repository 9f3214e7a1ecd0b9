"""Routing and the prediction log per row, on a real `mlbox serve`, with a sticky key that is not a model input.

Deployment `by_session` serves churn:1 with churn:2 as a 50% canary and churn:1 as its shadow,
sticky by `session_id` — a field no model takes. The rule under test (docs/serving.md, Routing):
a request is routed as a whole; the first row's sticky value picks the variant for every row;
rows may carry the sticky key (and only it) besides the model's inputs, and it is never fed to
the model. The log records every row's entity, so `mlbox labels ingest` by entity attaches each
label to its row of a multi-row request. Deployment `fs_sticky` does the same for entity
requests (churn_fs:1, sticky by its entity key).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlbox.serve.router import TrafficSplit

from ..conftest import OS_USER
from ._cases import GOOD
from .conftest import Server, assert_error, meta_rows, mlbox, open_box, sample_rows, wait_for

SPLIT = TrafficSplit("by_session", "churn:1", "churn:2", 50.0, "session_id")
MODEL = {"primary": "churn:1", "canary": "churn:2"}


def sessions_on(variant: str, n: int, prefix: str) -> list[str]:
    """`n` session ids that the documented hash sends to `variant`."""
    out = [f"{prefix}-{i}" for i in range(400) if SPLIT.route(f"{prefix}-{i}") == variant]
    assert len(out) >= n
    return out[:n]


def post(server: Server, deployment: str, body: dict[str, Any]) -> dict[str, Any]:
    response = server.client.post(f"/v1/deployments/{deployment}/predict", json=body, headers=server.auth())
    assert response.status_code == 200, response.text
    return dict(response.json())


def logged(server: Server, deployment: str, request_ids: list[str]) -> pd.DataFrame:
    """The log's answered records of `request_ids`, once they are all written (serve.log_flush_seconds is 1 s)."""

    def frame() -> list[pd.DataFrame]:  # a list: a DataFrame has no truth value for wait_for
        sql = f"SELECT path FROM prediction_batches WHERE deployment = '{deployment}'"
        paths = [server.home / r["path"] for r in meta_rows(server.home, sql)]
        if not paths:
            return []
        log = pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)
        log = log[~log.shadow & log.request_id.isin(request_ids)]
        return [log] if set(log.request_id) == set(request_ids) else []

    (found,) = wait_for(frame, 30, f"the log of {len(request_ids)} requests to {deployment}")
    assert len(found) == len(request_ids)  # each request logged once
    return found.set_index("request_id")


@pytest.fixture(scope="module")
def by_session(shared_server: Server) -> Server:
    with open_box(shared_server.home) as box:
        box.deployments.create("by_session", "churn:1", OS_USER, sticky_key="session_id")
        box.deployments.canary("by_session", "churn:2", 50, OS_USER)  # keeps the sticky key it was created with
        box.deployments.shadow("by_session", "churn:1", OS_USER)
    served = shared_server.wait_serving("by_session")
    assert (served["sticky_key"], served["canary_weight"]) == ("session_id", 50.0)
    return shared_server


def test_the_sticky_key_is_accepted_routed_on_and_never_fed_to_the_model(by_session: Server) -> None:
    server = by_session
    rows = sample_rows(6, seed=11)
    plain = post(server, "bad", {"rows": rows})["predictions"]  # churn:1 on the same rows, no sticky key
    for variant in ("primary", "canary"):
        for session in sessions_on(variant, 5, f"route-{variant}"):
            body = post(server, "by_session", {"rows": [{**row, "session_id": session} for row in rows]})
            assert (body["variant"], body["model"]) == (variant, MODEL[variant]), session
            if variant == "primary":  # the extra field changed nothing the model saw
                assert body["predictions"] == plain
    # integers are sticky values too; a row without the key is answered (routed by the random draw)
    assert post(server, "by_session", {"rows": [{**GOOD, "session_id": 12345}]})["variant"] == SPLIT.route(12345)
    assert post(server, "by_session", {"rows": [GOOD]})["variant"] in ("primary", "canary")


def test_the_first_row_decides_for_the_whole_request(by_session: Server) -> None:
    server = by_session
    (first,) = sessions_on("canary", 1, "first")
    (other,) = sessions_on("primary", 1, "first")
    rows = sample_rows(3, seed=12)
    mixed = [{**rows[0], "session_id": first}, {**rows[1], "session_id": other}, {**rows[2], "session_id": other}]
    body = post(server, "by_session", {"rows": mixed})
    assert (body["variant"], body["model"]) == ("canary", "churn:2")
    alone = post(server, "by_session", {"rows": [{**rows[1], "session_id": other}]})
    assert alone["variant"] == "primary"
    assert body["predictions"][1] != alone["predictions"][0]  # the second row too was answered by the canary
    flipped = post(server, "by_session", {"rows": [mixed[1], mixed[0]]})
    assert flipped["variant"] == "primary"


def test_only_the_sticky_key_may_be_extra(by_session: Server) -> None:
    url = "/v1/deployments/by_session/predict"
    headers = by_session.auth()
    extra = by_session.client.post(url, json={"rows": [{**GOOD, "session_id": "s", "user": "u"}]}, headers=headers)
    assert_error(extra, 422, "invalid", ("user",))
    bad = by_session.client.post(url, json={"rows": [{**GOOD, "session_id": {"id": 1}}]}, headers=headers)
    assert_error(bad, 422, "invalid", ("session_id",))
    # on a deployment without that sticky key the field is unknown, as before
    assert_error(by_session.predict("bad", [{**GOOD, "session_id": "s"}]), 422, "invalid", ("session_id",))


def test_every_row_is_logged_with_its_entity_and_the_shadow_sees_model_inputs_only(by_session: Server) -> None:
    server = by_session
    rows = sample_rows(4, seed=13)
    sent = [{**row, "session_id": f"log-{i}"} for i, row in enumerate(rows)]
    body = post(server, "by_session", {"rows": sent})
    record = logged(server, "by_session", [body["request_id"]]).loc[body["request_id"]]
    assert json.loads(record.entity) == [{"session_id": f"log-{i}"} for i in range(4)]
    assert json.loads(record.inputs) == rows  # what the model saw: no sticky key
    assert record.variant == SPLIT.route("log-0")
    errors = 'mlbox_shadow_errors_total{deployment="by_session",reason="error"}'
    wait_for(lambda: server.metrics().get('mlbox_shadow_predictions_total{deployment="by_session"}', 0) > 0, 30, "shadows")
    assert server.metrics().get(errors, 0) == 0


def ingest(server: Server, deployment: str, labels: pd.DataFrame, folder: Path, *keys: str) -> pd.DataFrame:
    path = folder / f"{deployment}-labels.parquet"
    labels.to_parquet(path)
    cli = mlbox(server.home, "--json", "labels", "ingest", deployment, str(path), *(a for k in keys for a in ("--key", k)))
    assert cli.returncode == 0, cli.stderr
    result = json.loads(cli.stdout)
    assert result["mode"] == ("entity" if keys else "request_id")
    return pq.read_table(server.home / result["path"]).to_pandas()


def test_labels_by_entity_attach_to_the_right_row_of_a_multi_row_request(by_session: Server, tmp_path: Path) -> None:
    server = by_session
    tag = f"lab{time.time_ns()}"
    rows = sample_rows(5, seed=14)
    a = post(server, "by_session", {"rows": [{**r, "session_id": f"{tag}-{i}"} for i, r in enumerate(rows[:3])]})
    b = post(server, "by_session", {"rows": [{**r, "session_id": f"{tag}-{i}"} for i, r in enumerate(rows[3:], start=3)]})
    logged(server, "by_session", [a["request_id"], b["request_id"]])
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=1)
    labels = pd.DataFrame({
        "session_id": [f"{tag}-2", f"{tag}-0", f"{tag}-4", f"{tag}-3", f"{tag}-9"],
        "ts": [later] * 4 + [later], "label": [12, 10, 14, 13, 19],
    })  # fmt: skip
    stored = ingest(server, "by_session", labels, tmp_path, "session_id")
    got = {(r.request_id, r.row): r.label for r in stored.itertuples()}
    assert got == {(a["request_id"], 2): 12, (a["request_id"], 0): 10, (b["request_id"], 1): 14, (b["request_id"], 0): 13}
    # a label older than every prediction of its entity matches nothing
    early = labels.assign(ts=pd.Timestamp("2020-01-01", tz="UTC"))
    assert ingest(server, "by_session", early, tmp_path, "session_id").empty
    # by request id, a `row` column names the row; without it a label is for the whole request
    by_id = ingest(server, "by_session", pd.DataFrame({"request_id": [a["request_id"]], "row": [1], "label": [11]}), tmp_path)
    assert [(r.request_id, r.row, r.label) for r in by_id.itertuples()] == [(a["request_id"], 1, 11)]
    whole = ingest(server, "by_session", pd.DataFrame({"request_id": [b["request_id"]], "label": [5]}), tmp_path)
    assert whole.row.isna().all() and list(whole.request_id) == [b["request_id"]]


def test_entity_requests_log_every_entity_and_labels_find_their_rows(shared_server: Server, tmp_path: Path) -> None:
    with open_box(shared_server.home) as box:
        box.deployments.create("fs_sticky", "churn_fs:1", OS_USER, sticky_key="customer_id")
    shared_server.wait_serving("fs_sticky")
    customers = [1004, 1001, 1007]
    body = post(shared_server, "fs_sticky", {"entities": [{"customer_id": c} for c in customers]})
    record = logged(shared_server, "fs_sticky", [body["request_id"]]).loc[body["request_id"]]
    assert json.loads(record.entity) == [{"customer_id": c} for c in customers]
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=1)
    labels = pd.DataFrame({"customer_id": [1007, 1004], "ts": [later, later], "label": [1, 0]})
    stored = ingest(shared_server, "fs_sticky", labels, tmp_path, "customer_id")
    assert {(r.request_id, r.row): r.label for r in stored.itertuples()} == {(body["request_id"], 2): 1, (body["request_id"], 0): 0}


def test_the_cli_declares_and_removes_the_sticky_key(shared_server: Server) -> None:
    home = shared_server.home
    created = mlbox(home, "--json", "deploy", "create", "cli_sticky", "--model", "churn:1", "--sticky-key", "user")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["sticky_key"] == "user"
    assert shared_server.wait_serving("cli_sticky")["sticky_key"] == "user"
    assert post(shared_server, "cli_sticky", {"rows": [{**GOOD, "user": "u-1"}]})["model"] == "churn:1"
    removed = mlbox(home, "--json", "deploy", "sticky", "cli_sticky", "--remove")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["sticky_key"] is None
    shared_server.wait_serving("cli_sticky")
    assert_error(shared_server.predict("cli_sticky", [{**GOOD, "user": "u-1"}]), 422, "invalid", ("user",))
    neither = mlbox(home, "deploy", "sticky", "cli_sticky")
    assert neither.returncode == 2 and "give a KEY, or --remove" in neither.stderr
    assert len(neither.stderr.strip().splitlines()) == 1
