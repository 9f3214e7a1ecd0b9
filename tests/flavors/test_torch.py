"""Torch flavor: the in-graph encoder, training loop, early stopping, weights-only artifacts, ONNX parity, the module hook."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mlbox.errors import UsageError
from mlbox.flavors import get_flavor
from mlbox.flavors.base import FitResult

from .conftest import KINDS, Data, Progress, assert_beats_constant, assert_onnx_matches, fit_recording, make_data, saved_and_loaded

flavor = get_flavor("torch")
PARAMS = {"epochs": 40, "lr": 1e-2, "batch_size": 64}


@pytest.fixture(scope="module", params=KINDS)
def fitted(request: pytest.FixtureRequest) -> tuple[Data, FitResult, Progress]:
    return fit_recording(flavor, request.param, PARAMS)


def test_fit_predict_beats_a_constant(fitted: tuple[Data, FitResult, list]) -> None:
    data, result, _ = fitted
    assert result.device == "cpu"
    assert_beats_constant(data, flavor.predict(result.model, data.X_test))


def test_progress_each_epoch_with_train_and_valid_loss(fitted: tuple[Data, FitResult, list]) -> None:
    _, result, calls = fitted
    assert [step for step, _ in calls] == list(range(1, result.steps + 1))
    assert all(set(m) == {"train_loss", "valid_loss"} for _, m in calls)
    assert result.history["train_loss"] == [m["train_loss"] for _, m in calls]


def test_save_load_gives_identical_predictions(fitted: tuple[Data, FitResult, list], tmp_path: Path) -> None:
    data, result, _ = fitted
    names, loaded = saved_and_loaded(flavor, result.model, tmp_path / "artifact")
    assert names == ["config.json", "model.pt"]
    config = json.loads((tmp_path / "artifact" / "config.json").read_text())
    assert config["categorical"] == [[3, 3]] and config["numeric"] == [0, 1, 2] and config["module"] is None
    np.testing.assert_array_equal(flavor.predict(loaded, data.X_test), flavor.predict(result.model, data.X_test))


def test_onnx_matches_native_predict(fitted: tuple[Data, FitResult, list], tmp_path: Path) -> None:
    data, result, _ = fitted
    _, loaded = saved_and_loaded(flavor, result.model, tmp_path / "artifact")
    assert_onnx_matches(flavor, loaded, data, tmp_path / "onnx")


def test_encoder_standardizes_and_one_hot_encodes_in_the_graph() -> None:
    data = make_data("binary")
    model = flavor.fit(data.request(params={"epochs": 1})).model
    rows = torch.tensor([[np.nan, 0, 0, np.nan], [0, 0, 0, 7], [0, 0, 0, 2.0]])
    encoded = model.encoder(rows)
    assert encoded.shape == (3, 6)
    assert not torch.isnan(encoded).any()
    assert encoded[0, 0] == 0  # missing numeric -> the mean
    torch.testing.assert_close(encoded[:, 3:], torch.tensor([[0.0, 0, 0], [0, 0, 0], [0, 0, 1]]))
    numeric = data.X[:400, :3].astype(np.float64)
    torch.testing.assert_close(model.encoder.mean, torch.tensor(np.nanmean(numeric, axis=0), dtype=torch.float32))


def test_same_seed_same_model() -> None:
    data = make_data("multiclass")
    first, second = (flavor.fit(data.request(params={"epochs": 3}, seed=5)).model for _ in range(2))
    np.testing.assert_array_equal(flavor.predict(first, data.X_test), flavor.predict(second, data.X_test))


def test_early_stopping_restores_the_best_epoch() -> None:
    data = make_data("binary", noise=1.5)
    result = flavor.fit(
        data.request(params={"epochs": 300, "lr": 0.02, "batch_size": 32, "dropout": 0.0}, early_stopping_rounds=4)
    )
    assert result.steps < 300
    assert result.best_step == int(np.argmin(result.history["valid_loss"])) + 1
    assert result.steps == result.best_step + 4
    p = flavor.predict(result.model, data.X[400:500])
    restored = -np.log(p[np.arange(100), data.y[400:500]]).mean()
    assert restored == pytest.approx(min(result.history["valid_loss"]), rel=1e-5)


USER_MODULE = """
from torch import nn

def build(n_features, n_outputs, width=4):
    return nn.Sequential(nn.Linear(n_features, width), nn.Tanh(), nn.Linear(width, n_outputs))
"""


def test_user_module_hook_trains_saves_and_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "usernet.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = make_data("regression")
    params = {"module": "usernet:build", "module_params": {"width": 8}, "epochs": 40, "lr": 0.02}
    model = flavor.fit(data.request(params=params)).model
    assert model.body[0].out_features == 8 and model.body[0].in_features == 6  # encoded width
    assert_beats_constant(data, flavor.predict(model, data.X_test))
    _, loaded = saved_and_loaded(flavor, model, tmp_path / "artifact")
    assert json.loads((tmp_path / "artifact" / "config.json").read_text())["module"] == "usernet:build"
    np.testing.assert_array_equal(flavor.predict(loaded, data.X_test), flavor.predict(model, data.X_test))
    assert_onnx_matches(flavor, loaded, data, tmp_path / "onnx")


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"layers": [8]}, "'layers'"),
        ({"hidden": [8, 0]}, "'hidden'"),
        ({"epochs": 1.5}, "'epochs'"),
        ({"dropout": 1.0}, "'dropout'"),
        ({"module": "nope_no_such_module:build", "epochs": 1}, "nope_no_such_module"),
        ({"module": "os.path"}, "'module'"),
    ],
)
def test_bad_params_are_refused(params: dict, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        flavor.fit(make_data("binary").request(params=params))


def test_cuda_is_unavailable_here_with_a_reason() -> None:
    ok, why = flavor.cuda_available()
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert ok is False and why
    with pytest.raises(UsageError, match="cuda"):
        flavor.fit(make_data("binary").request(device="cuda", params={"epochs": 1}))
