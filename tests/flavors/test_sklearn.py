"""scikit-learn flavor: estimator import paths, params, the preprocessing Pipeline, joblib round trip, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline

from mlbox.errors import UsageError
from mlbox.flavors import get_flavor
from mlbox.flavors.base import FitResult

from .conftest import KINDS, Data, assert_beats_constant, assert_onnx_matches, make_data, saved_and_loaded

flavor = get_flavor("sklearn")
LINEAR = {"classification": "sklearn.linear_model.LogisticRegression", "regression": "sklearn.linear_model.Ridge"}
# (estimator or None for the HistGradientBoosting default, preprocess)
VARIANTS = [(None, False), (None, True), ("linear", True)]


@pytest.fixture(scope="module", params=[(k, *v) for k in KINDS for v in VARIANTS], ids=str)
def fitted(request: pytest.FixtureRequest) -> tuple[Data, FitResult, list[int]]:
    kind, estimator, preprocess = request.param
    data = make_data(kind)
    steps: list[int] = []
    result = flavor.fit(
        data.request(
            estimator=LINEAR[data.task] if estimator else None,
            preprocess=preprocess,
            params={"max_iter": 60} if estimator is None else {},
            on_progress=lambda step, metrics: steps.append(step),
        )
    )
    return data, result, steps


def test_fit_predict_beats_a_constant(fitted: tuple[Data, FitResult, list[int]]) -> None:
    data, result, steps = fitted
    assert_beats_constant(data, flavor.predict(result.model, data.X_test))
    assert steps == [result.steps]
    assert set(result.history) == {"train_loss", "valid_loss"}


def test_save_load_gives_identical_predictions(fitted: tuple[Data, FitResult, list[int]], tmp_path: Path) -> None:
    data, result, _ = fitted
    names, loaded = saved_and_loaded(flavor, result.model, tmp_path / "artifact")
    assert names == ["model.joblib"]
    np.testing.assert_array_equal(flavor.predict(loaded, data.X_test), flavor.predict(result.model, data.X_test))


def test_onnx_matches_native_predict(fitted: tuple[Data, FitResult, list[int]], tmp_path: Path) -> None:
    data, result, _ = fitted
    assert_onnx_matches(flavor, result.model, data, tmp_path / "onnx")


@pytest.mark.parametrize("seed", range(6))
def test_preprocessed_trees_match_onnx_on_every_row(seed: int, tmp_path: Path) -> None:
    """Scaled columns feeding tree splits: imputed medians and repeated values sit on thresholds."""
    data = make_data("binary", seed=seed)
    result = flavor.fit(data.request(preprocess=True, params={"max_iter": 60}))
    model = result.model
    assert isinstance(model, Pipeline) and isinstance(model.named_steps["prep"], ColumnTransformer)
    assert [name for name, _, _ in model.named_steps["prep"].transformers] == ["num", "cat"]
    assert_onnx_matches(flavor, model, data, tmp_path / "onnx", X=data.X)  # training rows too


def test_preprocess_one_hot_treats_missing_and_unknown_codes_as_all_zeros() -> None:
    data = make_data("binary")
    model = flavor.fit(data.request(preprocess=True, estimator=LINEAR["classification"])).model
    rows = np.array([[0, 0, 0, np.nan], [0, 0, 0, 7], [0, 0, 0, 1]], dtype=np.float32)
    encoded = model.named_steps["prep"].transform(rows)
    np.testing.assert_array_equal(encoded[:, -3:], [[0, 0, 0], [0, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize(
    "estimator, fragment",
    [
        ("os.system", "not under 'sklearn.'"),
        ("builtins.eval", "not under 'sklearn.'"),
        ("sklearn.utils.Bunch", "not a scikit-learn estimator"),
        ("sklearn.base.os.system", "not a scikit-learn estimator"),
        ("sklearn.nope.Missing", "not a scikit-learn estimator"),
        ("sklearn.linear_model.Ridge", "not a classifier"),
    ],
)
def test_refuses_what_is_not_a_sklearn_estimator(estimator: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        flavor.fit(make_data("binary").request(estimator=estimator))


def test_unknown_param_is_named() -> None:
    with pytest.raises(UsageError, match="'max_iterations'"):
        flavor.fit(make_data("binary").request(params={"max_iterations": 3}))


def test_invalid_param_value_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="max_iter"):
        flavor.fit(make_data("binary").request(params={"max_iter": "many"}))


def test_seed_becomes_random_state_unless_given() -> None:
    data = make_data("regression")
    assert flavor.fit(data.request(seed=7, params={"max_iter": 3})).model.random_state == 7
    assert flavor.fit(data.request(seed=7, params={"max_iter": 3, "random_state": 1})).model.random_state == 1


def test_nan_without_preprocess_hints_at_it() -> None:
    with pytest.raises(UsageError, match="preprocess=True"):
        flavor.fit(make_data("binary").request(estimator=LINEAR["classification"]))


def test_early_stopping_uses_the_validation_set() -> None:
    data = make_data("binary", noise=1.5)
    result = flavor.fit(data.request(params={"max_iter": 500}, early_stopping_rounds=3))
    assert result.model.early_stopping is True and result.model.n_iter_no_change == 3
    assert result.steps == result.model.n_iter_ < 500


def test_trees_that_route_nan_refuse_onnx_export(tmp_path: Path) -> None:
    data = make_data("binary")
    forest = "sklearn.ensemble.RandomForestClassifier"
    raw = flavor.fit(data.request(estimator=forest, params={"n_estimators": 10})).model
    with pytest.raises(UsageError, match="preprocess=True"):
        flavor.to_onnx(raw, 4, "classification", 2, tmp_path / "raw.onnx")
    prepped = flavor.fit(data.request(estimator=forest, params={"n_estimators": 10}, preprocess=True)).model
    assert_onnx_matches(flavor, prepped, data, tmp_path / "onnx")


def test_cuda_is_unavailable_with_a_reason() -> None:
    ok, why = flavor.cuda_available()
    assert ok is False and why
    result = flavor.fit(make_data("regression").request(device="cuda", params={"max_iter": 3}))
    assert result.device == "cpu" and result.notes
