"""Deployments as rows in meta.db: each change bumps the revision and is audited; promote and both rollback paths;
what may not be deployed; and the live runtime's reload picking up exactly the changed deployments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlbox.box import Box
from mlbox.errors import Conflict, NotFound, UsageError, ValidationError
from mlbox.serve.deployments import Deployment
from mlbox.serve.router import TrafficSplit
from mlbox.serve.runtime import ModelCache, Runtime

from ..conftest import OS_USER
from .conftest import Template, copy_box, open_box


@pytest.fixture
def box(serve_template: Template, tmp_path: Path) -> Iterator[Box]:
    with open_box(copy_box(serve_template, tmp_path / "box")) as b:
        yield b


def test_each_change_bumps_the_revision_and_is_audited(box: Box) -> None:
    d = box.deployments
    steps: list[tuple[Callable[[], Deployment], str]] = [
        (lambda: d.create("churn", "churn:1", OS_USER), "deploy.create"),
        (lambda: d.canary("churn", "churn:2", 10, OS_USER, "customer_id"), "deploy.canary"),
        (lambda: d.shadow("churn", "churn_bc:1", OS_USER), "deploy.shadow"),
        (lambda: d.promote("churn", OS_USER), "deploy.promote"),
        (lambda: d.rollback("churn", OS_USER), "deploy.rollback"),
        (lambda: d.shadow("churn", None, OS_USER), "deploy.shadow"),
    ]
    for revision, (step, action) in enumerate(steps, start=1):
        assert step().revision == revision
        latest = box.audit.entries(limit=1, target="churn")[0]
        assert (latest.action, latest.actor) == (action, OS_USER)
    assert box.audit.verify().ok


def test_split_carries_every_routing_field(box: Box) -> None:
    box.deployments.create("churn", "churn:1", OS_USER)
    d = box.deployments.canary("churn", "churn:2", 25, OS_USER, "customer_id")
    d = box.deployments.shadow("churn", "churn_bc:1", OS_USER)
    assert d.split() == TrafficSplit("churn", "churn:1", "churn:2", 25.0, "customer_id", "churn_bc:1", d.revision)


def test_the_sticky_key_is_declared_on_the_deployment(box: Box) -> None:
    d = box.deployments
    assert d.create("churn", "churn:1", OS_USER, sticky_key="session_id").sticky_key == "session_id"
    assert d.canary("churn", "churn:2", 10, OS_USER).sticky_key == "session_id"  # a canary keeps it
    assert d.canary("churn", "churn:2", 20, OS_USER, "customer_id").sticky_key == "customer_id"
    assert d.promote("churn", OS_USER).sticky_key == "customer_id"
    removed = d.sticky("churn", None, OS_USER)
    assert removed.sticky_key is None and removed.split().sticky_key is None
    latest = box.audit.entries(limit=1, target="churn")[0]
    assert (latest.action, latest.details) == ("deploy.sticky", {"sticky_key": None})
    assert d.sticky("churn", "user", OS_USER).revision == removed.revision + 1
    with pytest.raises(UsageError, match="sticky key"):
        d.create("other", "churn:1", OS_USER, sticky_key="Session ID")
    with pytest.raises(UsageError, match="sticky key"):
        d.sticky("churn", "a b", OS_USER)


def test_promote_keeps_the_old_primary_and_rollback_brings_it_back(box: Box) -> None:
    d = box.deployments
    d.create("churn", "churn:1", OS_USER)
    d.canary("churn", "churn:2", 10, OS_USER)
    promoted = d.promote("churn", OS_USER)
    assert (promoted.primary_model, promoted.previous_primary, promoted.canary_model, promoted.canary_weight) == ("churn:2", "churn:1", None, 0)
    back = d.rollback("churn", OS_USER)
    assert (back.primary_model, back.previous_primary) == ("churn:1", "churn:2")


def test_rollback_of_a_canary_with_traffic_only_zeroes_its_weight(box: Box) -> None:
    d = box.deployments
    d.create("churn", "churn:1", OS_USER)
    d.canary("churn", "churn:2", 40, OS_USER)
    rolled = d.rollback("churn", OS_USER)
    assert (rolled.primary_model, rolled.canary_model, rolled.canary_weight) == ("churn:1", "churn:2", 0)
    with pytest.raises(Conflict, match="nothing to roll back"):
        d.rollback("churn", OS_USER)  # no canary traffic left, no previous primary


def test_refusals(box: Box) -> None:
    d = box.deployments
    d.create("churn", "churn:1", OS_USER)
    with pytest.raises(Conflict, match="already exists"):
        d.create("churn", "churn:2", OS_USER)
    with pytest.raises(UsageError, match="deployment name"):
        d.create("Churn!", "churn:1", OS_USER)
    with pytest.raises(NotFound):
        d.create("other", "churn:7", OS_USER)
    with pytest.raises(UsageError, match="between 0 and 100"):
        d.canary("churn", "churn:2", 100.5, OS_USER)
    with pytest.raises(ValidationError, match="different inputs"):
        d.canary("churn", "churn_fs:1", 10, OS_USER)
    with pytest.raises(UsageError, match="already the primary"):
        d.canary("churn", "churn:1", 10, OS_USER)
    with pytest.raises(Conflict, match="no canary"):
        d.promote("churn", OS_USER)
    box.registry.archive("churn:2", OS_USER)
    with pytest.raises(Conflict, match="archived"):
        d.canary("churn", "churn:2", 10, OS_USER)
    assert d.get("churn").revision == 1  # nothing above changed it


def test_runtime_reloads_only_changed_deployments(box: Box) -> None:
    d = box.deployments
    d.create("one", "churn:1", OS_USER)
    d.create("two", "churn:1", OS_USER)
    runtime = Runtime(d, ModelCache(box.registry, 1), reload_seconds=60)
    assert runtime.refresh() is True
    one, two = runtime.get("one"), runtime.get("two")
    assert runtime.refresh() is False  # nothing changed
    d.canary("two", "churn:2", 50, OS_USER)
    assert runtime.refresh() is True
    assert runtime.get("one") is one  # untouched deployments keep their live object
    assert runtime.get("two") is not two and runtime.get("two").canary is not None
    assert runtime.get("two").canary.ref == "churn:2"  # type: ignore[union-attr]
    assert runtime.get("two").primary is one.primary  # one session per model version
    with pytest.raises(NotFound):
        runtime.get("three")
