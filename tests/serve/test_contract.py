"""The published API is the one the server keeps: schemathesis, with every check, against a real `mlbox serve`.

The document comes from the live server (/openapi.json, generated from its deployments), so
the predict bodies schemathesis sends are built from the models' signatures. Every phase
runs (examples, coverage, fuzzing, positive and negative data), then the stateful phase
follows the document's links (list -> get -> manage). Examples are bounded and
derandomized so the module runs in about a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck

from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES as REJECTIONS

from ..conftest import OS_USER
from .conftest import Server, Template, copy_box, open_box, running_server

MAX_EXAMPLES = 15
SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)  # fmt: skip


@pytest.fixture(scope="module")
def contract_server(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`plain` (churn:1, canary churn:2 at 50%, sticky by `account`) answers rows; `fs` (churn_fs:1) rows or
    entities; 5 rows a request."""
    home: Path = copy_box(serve_template, tmp_path_factory.mktemp("contract") / "box")
    with open_box(home) as box:
        box.deployments.create("plain", "churn:1", OS_USER)
        box.deployments.canary("plain", "churn:2", 50, OS_USER, sticky_key="account")  # not a model input
        box.deployments.create("fs", "churn_fs:1", OS_USER)
    # keep-last: JSON Schema cannot say "rows unique by (entity, timestamp)", which the default policy requires
    settings = {"MLBOX_SERVE_MAX_ROWS": "5", "MLBOX_FEATURES_DUPLICATE_POLICY": "keep-last"}
    with running_server(home, serve_template.tokens, **settings) as server:
        yield server


@pytest.fixture(scope="module")
def admin(contract_server: Server) -> dict[str, str]:
    return contract_server.auth("admin")


@pytest.fixture(scope="module")
def api_schema(contract_server: Server, admin: dict[str, str]) -> Any:
    config = schemathesis.Config.from_dict({
        "headers": admin,  # every call, the stateful phase's too
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
        # too many rows is refused with 413, the documented answer for any limit; schemathesis's default list of
        # rejections leaves it out
        "checks": {"negative_data_rejection": {"expected-statuses": [*REJECTIONS, 413]}},
    })  # fmt: skip
    return schemathesis.openapi.from_url(f"{contract_server.url}/openapi.json", headers=admin, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


def test_the_document_names_every_served_deployment(contract_server: Server, admin: dict[str, str]) -> None:
    doc = contract_server.client.get("/openapi.json", headers=admin).json()
    predicts = sorted(p for p in doc["paths"] if p.endswith("/predict"))
    assert predicts == ["/v1/deployments/fs/predict", "/v1/deployments/plain/predict"]
    plain = doc["paths"]["/v1/deployments/plain/predict"]["post"]
    answer = plain["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["variant"] == {"enum": ["primary", "canary"]}
    assert "churn:1 or churn:2" in plain["summary"]


@schema.parametrize()
@SETTINGS
def test_every_operation_keeps_the_document(case: schemathesis.Case, admin: dict[str, str]) -> None:
    case.call_and_validate(headers=admin)


def test_stateful_workflows_keep_the_document(api_schema: Any, admin: dict[str, str]) -> None:
    """Workflows along the document's links: each step's response must keep the document too."""
    calls: list[tuple[str, str, int]] = []

    # the console's operations (api/manage.py) declare no links: a walk starting there would follow none
    linked = api_schema.exclude(path_regex="^/v1/console/")

    class Workflow(linked.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": admin}

        def after_call(self, response: schemathesis.Response, case: schemathesis.Case) -> None:
            calls.append((case.method, case.formatted_path, response.status_code))

    Workflow.run(settings=hypothesis.settings(
        max_examples=10, stateful_step_count=4, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    ))  # fmt: skip
    # the links were followed: a deployment named by the list (or by a management answer) was fetched
    assert {("GET", "/v1/deployments/plain", 200), ("GET", "/v1/deployments/fs", 200)} & set(calls), calls
