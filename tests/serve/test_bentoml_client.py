"""BentoML's own client against a real `mlbox serve`: it finds one endpoint per deployment in /schema.json, calls
them by name or as methods, and gets exactly the answers plain HTTP gets (the packaged Bento: test_package.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import pytest
from bentoml.exceptions import BentoMLException

from ..conftest import OS_USER
from .conftest import Server, Template, copy_box, open_box, running_server, sample_rows


@pytest.fixture(scope="module")
def server(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home: Path = copy_box(serve_template, tmp_path_factory.mktemp("bento-client") / "box")
    with open_box(home) as box:
        box.deployments.create("plain", "churn:1", OS_USER)
        box.deployments.create("fs", "churn_fs:1", OS_USER)
    with running_server(home, serve_template.tokens) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[bentoml.SyncHTTPClient]:
    with bentoml.SyncHTTPClient(server.url, token=server.tokens["service"], server_ready_timeout=30) as c:
        yield c


def without_request_id(answer: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(answer["request_id"], str) and answer["request_id"]
    return {k: v for k, v in answer.items() if k != "request_id"}


def test_the_client_discovers_one_endpoint_per_deployment(client: bentoml.SyncHTTPClient) -> None:
    assert set(client.endpoints) == {"plain", "fs"}
    assert client.endpoints["plain"].route == "/v1/deployments/plain/predict"
    assert set(client.endpoints["fs"].input["properties"]) == {"rows", "entities"}
    assert set(client.endpoints["plain"].input["properties"]) == {"rows"}


def test_rows_by_method_and_by_name_answer_as_plain_http(client: bentoml.SyncHTTPClient, server: Server) -> None:
    rows = sample_rows(4, seed=11)
    http = server.predict("plain", rows)
    assert http.status_code == 200, http.text
    by_method = client.plain(rows=rows)
    by_name = client.call("plain", rows=rows)
    assert without_request_id(by_method) == without_request_id(by_name) == without_request_id(http.json())
    assert by_method["model"] == "churn:1" and len(by_method["predictions"]) == 4


def test_entities_answer_as_plain_http(client: bentoml.SyncHTTPClient, server: Server) -> None:
    entities = [{"customer_id": 1001}, {"customer_id": 1002}]
    http = server.client.post("/v1/deployments/fs/predict", json={"entities": entities}, headers=server.auth())
    assert http.status_code == 200, http.text
    assert without_request_id(client.fs(entities=entities)) == without_request_id(http.json())


def test_a_bad_row_is_the_same_error_through_the_client(client: bentoml.SyncHTTPClient) -> None:
    row = {**sample_rows(1)[0], "x0": "high"}
    with pytest.raises(BentoMLException) as caught:
        client.plain(rows=[row])
    assert caught.value.error_code == 422
    assert '"code":"invalid"' in str(caught.value) and "x0" in str(caught.value)


def test_the_client_needs_a_token_that_may_read(server: Server) -> None:
    with pytest.raises(BentoMLException, match="schema"):
        bentoml.SyncHTTPClient(server.url, server_ready_timeout=30)
