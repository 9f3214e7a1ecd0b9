"""What each flavor answers for the training workflow: its params, its step count, whether it watches validation rows."""

from __future__ import annotations

import pytest

from mlbox.errors import UsageError
from mlbox.flavors import FLAVORS, get_flavor


def test_xgboost_answers() -> None:
    flavor = get_flavor("xgboost")
    assert flavor.total_steps({"n_estimators": 7}) == 7 and flavor.total_steps({}) == 200
    assert flavor.uses_validation(None) and flavor.uses_validation(3)
    flavor.check_params({"max_depth": 3, "learning_rate": 0.1}, task="classification", estimator=None, seed=1)
    with pytest.raises(UsageError, match="set by mlbox"):
        flavor.check_params({"objective": "reg:squarederror"}, task="regression", estimator=None, seed=1)
    with pytest.raises(UsageError, match="n_estimators"):
        flavor.check_params({"n_estimators": 0}, task="classification", estimator=None, seed=1)


def test_torch_answers() -> None:
    flavor = get_flavor("torch")
    assert flavor.total_steps({"epochs": 3}) == 3 and flavor.total_steps({}) == 50
    assert flavor.uses_validation(None)
    flavor.check_params({"hidden": [8], "epochs": 2}, task="regression", estimator=None, seed=1)
    with pytest.raises(UsageError, match="unknown parameter 'layers'"):
        flavor.check_params({"layers": 2}, task="regression", estimator=None, seed=1)
    with pytest.raises(UsageError, match="'lr' must be a positive number"):
        flavor.check_params({"lr": -1}, task="regression", estimator=None, seed=1)


def test_sklearn_answers() -> None:
    flavor = get_flavor("sklearn")
    assert flavor.total_steps({"max_iter": 30}) is None
    assert not flavor.uses_validation(None) and flavor.uses_validation(5)
    flavor.check_params({"max_iter": 30}, task="classification", estimator=None, seed=1)
    with pytest.raises(UsageError, match="unknown parameter 'bogus'"):
        flavor.check_params({"bogus": 1}, task="classification", estimator=None, seed=1)
    with pytest.raises(UsageError, match="not under 'sklearn.'"):
        flavor.check_params({}, task="classification", estimator="os.system", seed=1)
    with pytest.raises(UsageError, match="not a regressor"):
        flavor.check_params({}, task="regression", estimator="sklearn.linear_model.LogisticRegression", seed=1)


@pytest.mark.parametrize("name", sorted(FLAVORS))
def test_every_flavor_implements_the_protocol(name: str) -> None:
    flavor = get_flavor(name)
    for method in ("check_params", "total_steps", "uses_validation", "fit", "predict", "save", "load", "to_onnx", "cuda_available"):
        assert callable(getattr(flavor, method)), method
