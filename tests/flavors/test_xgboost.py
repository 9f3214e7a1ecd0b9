"""XGBoost flavor: native training, progress, early stopping, .ubj round trip, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlbox.errors import UsageError
from mlbox.flavors import get_flavor
from mlbox.flavors.base import FitResult

from .conftest import KINDS, Data, Progress, assert_beats_constant, assert_onnx_matches, fit_recording, make_data, saved_and_loaded

flavor = get_flavor("xgboost")
PARAMS = {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.2}


@pytest.fixture(scope="module", params=KINDS)
def fitted(request: pytest.FixtureRequest) -> tuple[Data, FitResult, Progress]:
    return fit_recording(flavor, request.param, PARAMS)


def test_fit_predict_beats_a_constant(fitted: tuple[Data, FitResult, list]) -> None:
    data, result, _ = fitted
    assert result.device == "cpu"
    assert_beats_constant(data, flavor.predict(result.model, data.X_test))


def test_progress_each_round_with_train_and_valid_loss(fitted: tuple[Data, FitResult, list]) -> None:
    _, result, calls = fitted
    assert [step for step, _ in calls] == list(range(1, result.steps + 1))
    assert all(set(m) == {"train_loss", "valid_loss"} for _, m in calls)
    assert result.history["valid_loss"] == pytest.approx([m["valid_loss"] for _, m in calls])
    assert len(result.history["train_loss"]) == result.steps


def test_save_load_gives_identical_predictions(fitted: tuple[Data, FitResult, list], tmp_path: Path) -> None:
    data, result, _ = fitted
    names, loaded = saved_and_loaded(flavor, result.model, tmp_path / "artifact")
    assert names == ["model.ubj"]
    np.testing.assert_array_equal(flavor.predict(loaded, data.X_test), flavor.predict(result.model, data.X_test))


def test_onnx_matches_native_predict(fitted: tuple[Data, FitResult, list], tmp_path: Path) -> None:
    data, result, _ = fitted
    _, loaded = saved_and_loaded(flavor, result.model, tmp_path / "artifact")
    assert_onnx_matches(flavor, loaded, data, tmp_path / "onnx")


def test_binary_probabilities_are_two_columns() -> None:
    data = make_data("binary")
    result = flavor.fit(data.request(params={"n_estimators": 5}))
    p = flavor.predict(result.model, data.X_test)
    assert p.shape == (100, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


def test_early_stopping_keeps_the_best_rounds() -> None:
    data = make_data("binary", noise=1.5)
    result = flavor.fit(data.request(params={"n_estimators": 500, "learning_rate": 0.3}, early_stopping_rounds=5))
    assert result.best_step is not None
    assert result.steps < 500
    assert result.steps == result.best_step + 5
    assert result.model.num_boosted_rounds() == result.best_step
    best = int(np.argmin(result.history["valid_loss"])) + 1
    assert best == result.best_step


def test_no_validation_set_trains_every_round() -> None:
    data = make_data("regression")
    result = flavor.fit(data.request(X_valid=None, y_valid=None, params={"n_estimators": 7}, early_stopping_rounds=2))
    assert result.steps == 7 and result.best_step is None
    assert set(result.history) == {"train_loss"}
    assert result.notes


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"objective": "reg:tweedie"}, "'objective'"),
        ({"device": "cuda"}, "'device'"),
        ({"max_depth": {"a": 1}}, "'max_depth'"),
        ({"n_estimators": 0}, "n_estimators"),
        ({"n_estimators": 2.5}, "n_estimators"),
    ],
)
def test_bad_params_are_refused(params: dict, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        flavor.fit(make_data("binary").request(params=params))


def test_cuda_is_unavailable_here_with_a_reason() -> None:
    ok, why = flavor.cuda_available()
    assert ok is False
    assert "nvidia-smi" in why
    with pytest.raises(UsageError, match="cuda"):
        flavor.fit(make_data("binary").request(device="cuda", params={"n_estimators": 2}))
