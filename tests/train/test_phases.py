"""`train` in phases: the workflow asks the flavor (never its name) and times every phase."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from mlbox.errors import UsageError
from mlbox.flavors.base import FitRequest, FitResult
from mlbox.flavors.xgboost import XGBoostFlavor
from mlbox.train import runner

from .conftest import FAST_PARAMS, Project


def record_requests(monkeypatch: pytest.MonkeyPatch) -> list[FitRequest]:
    seen: list[FitRequest] = []
    real_fit = XGBoostFlavor.fit

    def fit(self: XGBoostFlavor, request: FitRequest) -> FitResult:
        seen.append(request)
        return real_fit(self, request)

    monkeypatch.setattr(XGBoostFlavor, "fit", fit)
    return seen


def test_validation_rows_follow_the_flavors_answer(churn: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = record_requests(monkeypatch)
    churn.train(churn.fast_spec())
    watched = seen.pop()
    assert watched.X_valid is not None and len(watched.X_valid) > 0
    monkeypatch.setattr(XGBoostFlavor, "uses_validation", lambda self, rounds: False)
    churn.train(churn.fast_spec())
    merged = seen.pop()
    assert merged.X_valid is None and len(merged.X_train) == len(watched.X_train) + len(watched.X_valid)


def test_progress_total_is_the_flavors_step_count(churn: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(XGBoostFlavor, "total_steps", lambda self, params: 12345)
    totals: set[Any] = set()
    churn.train(churn.fast_spec(), progress=lambda stage, step, total, values: totals.add((stage, total)))
    assert ("training", 12345) in totals and ("loading data", None) in totals


def test_params_are_refused_by_the_flavor_before_a_run(churn: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: XGBoostFlavor, params: Any, **_: Any) -> None:
        raise UsageError("refused by the flavor")

    monkeypatch.setattr(XGBoostFlavor, "check_params", refuse)
    with pytest.raises(UsageError, match="refused by the flavor"):
        churn.train(churn.fast_spec())
    assert churn.count("runs") == 0 and churn.count("training_sets") == 0


def test_the_workflow_never_looks_at_the_flavors_name() -> None:
    source = inspect.getsource(runner)
    assert "spec.flavor ==" not in source and "flavor.name" not in source and "from mlbox.flavors.xgboost" not in source


def test_phase_seconds_are_returned_and_tagged(churn: Project) -> None:
    result = churn.train(churn.fast_spec(flavor="torch", params=FAST_PARAMS["torch"]))
    assert list(result.phase_seconds) == ["prepare", "load", "encode", "track", "fit", "evaluate", "gate", "save"]
    assert all(v >= 0 for v in result.phase_seconds.values()) and result.phase_seconds["fit"] > 0
    tagged = churn.box.tracking.run(result.run_id).tags["phase_seconds"]
    assert tagged == {k: round(v, 4) for k, v in result.phase_seconds.items()}
