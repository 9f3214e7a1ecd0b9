"""Reference profiles: the mlbox-profile/1 format from a real signature and encoded matrix, checked by hand."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from mlbox.errors import UsageError
from mlbox.flavors.signature import Signature
from mlbox.flavors.profile import FORMAT, build_profile, categorical_entry, is_current, numeric_entry


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [10.0, 20.0, 20.0, 30.0, None],
            "plan": ["basic", "pro", "pro", None, "pro"],
            "active": [True, False, True, True, True],
            "churn": [0, 1, 0, 1, 1],
        }
    )


def test_build_profile_matches_hand_computation(frame: pd.DataFrame) -> None:
    sig = Signature.infer(frame, ["age", "plan", "active"], "churn", "classification")
    X = sig.encode(frame)
    profile = build_profile(X, sig, task="classification", importance={"age": 0.7, "plan": 0.3})
    assert is_current(profile) and profile["format"] == FORMAT and profile["rows"] == 5
    age = profile["features"]["age"]
    assert (age["kind"], age["rows"], age["nulls"], age["min"], age["max"], age["mean"]) == ("numeric", 5, 1, 10.0, 30.0, 20.0)
    assert age["std"] == pytest.approx(math.sqrt(50.0))  # population std of 10, 20, 20, 30
    assert age["grid"] == [10.0, 20.0, 30.0] and age["cdf"] == [0.25, 0.75, 1.0]  # every distinct value
    # deciles (smallest value whose CDF reaches i/10) are 10, 20, 30; the maximum is no cut point
    assert age["edges"] == [10.0, 20.0] and age["counts"] == [1, 2, 1]
    assert profile["features"]["plan"] == {"kind": "categorical", "rows": 5, "nulls": 1, "levels": {"basic": 1, "pro": 3}}
    assert profile["features"]["active"]["levels"] == {"False": 1, "True": 4}  # booleans by level name
    assert profile["importance"] == {"age": 0.7, "plan": 0.3, "active": 0.0}
    assert profile["outputs"] == {}
    json.dumps(profile, allow_nan=False)


def test_classification_outputs_binary_and_multiclass(frame: pd.DataFrame) -> None:
    sig = Signature.infer(frame, ["age", "plan"], "churn", "classification")
    X = sig.encode(frame)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    outputs = build_profile(X, sig, task="classification", predictions=probs)["outputs"]
    assert set(outputs) == {"class", "p_1"}  # binary: only the positive class's probability
    assert outputs["class"]["levels"] == {"0": 2, "1": 3} and outputs["class"]["nulls"] == 0
    assert outputs["p_1"]["grid"] == [0.1, 0.4, 0.55, 0.7, 0.8] and outputs["p_1"]["mean"] == pytest.approx(0.51)

    three = frame.assign(churn=["a", "b", "c", "a", "c"])
    sig3 = Signature.infer(three, ["age", "plan"], "churn", "classification")
    probs3 = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    out3 = build_profile(sig3.encode(three), sig3, task="classification", predictions=probs3)["outputs"]
    assert set(out3) == {"class", "p_a", "p_b", "p_c"}
    assert out3["class"]["levels"] == {"a": 2, "b": 1, "c": 2}
    assert out3["p_c"]["max"] == 0.8 and out3["p_c"]["rows"] == 5
    with pytest.raises(UsageError):
        build_profile(sig3.encode(three), sig3, task="classification", predictions=probs3[:, :2])
    json.dumps(out3, allow_nan=False)


def test_regression_outputs(frame: pd.DataFrame) -> None:
    reg = frame.assign(churn=[1.5, 2.5, 3.5, 4.5, 5.5])
    sig = Signature.infer(reg, ["age", "plan"], "churn", "regression")
    out = build_profile(sig.encode(reg), sig, task="regression", predictions=np.array([1.0, 2.0, 3.0, np.nan, 5.0]))["outputs"]
    assert set(out) == {"prediction"} and out["prediction"]["nulls"] == 1 and out["prediction"]["grid"] == [1.0, 2.0, 3.0, 5.0]
    with pytest.raises(UsageError):
        build_profile(sig.encode(reg), sig, task="regression", predictions=np.ones((5, 2)))


def test_many_distinct_values_keep_a_quantile_grid() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=50_000)
    entry = numeric_entry(values)
    grid, cdf = np.array(entry["grid"]), np.array(entry["cdf"])
    assert len(grid) == 1001 and grid[0] == values.min() and grid[-1] == values.max() and cdf[-1] == 1.0
    levels = np.arange(1001) / 1000
    assert np.all(cdf >= levels - 1e-12) and np.all(cdf < levels + 1 / 50_000 + 1e-12)  # smallest value reaching i/1000
    assert np.all(np.diff(grid) > 0)
    assert len(entry["edges"]) == 9 and sum(entry["counts"]) == 50_000
    assert entry["counts"] == [5000] * 10  # continuous data: deciles split it evenly


def test_edge_cases_of_entries() -> None:
    empty = numeric_entry(np.full(4, np.nan))
    assert empty["nulls"] == 4 and empty["grid"] == [] and empty["std"] is None
    constant = numeric_entry(np.array([2.0, 2.0, np.inf]))
    assert constant["nulls"] == 1 and constant["edges"] == [] and constant["counts"] == [2] and constant["std"] == 0.0
    assert categorical_entry({"x": 3, None: 2}) == {"kind": "categorical", "rows": 5, "nulls": 2, "levels": {"x": 3}}
    assert not is_current({"format": "mlbox-profile/0", "rows": 1, "features": {}})
    assert not is_current(None)


def test_profile_of_a_large_matrix_is_fast() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({f"n{i}": rng.normal(size=200_000) for i in range(10)})
    frame["c"] = rng.choice(["a", "b", "c"], size=200_000)
    frame["y"] = rng.normal(size=200_000)
    sig = Signature.infer(frame, [*(f"n{i}" for i in range(10)), "c"], "y", "regression")
    X = sig.encode(frame)
    start = time.perf_counter()
    profile = build_profile(X, sig, task="regression", predictions=frame["y"].to_numpy())
    elapsed = time.perf_counter() - start
    assert profile["features"]["c"]["rows"] == 200_000
    assert elapsed < 2.0, elapsed  # ~0.15 s on the dev machine (one sort per column)
