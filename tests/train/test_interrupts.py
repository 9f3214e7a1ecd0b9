"""What stops a training run: an ONNX mismatch, Ctrl-C, and a device this machine does not have.

The only things replaced are the GPU boundary (`cuda_available`, a fake `nvidia-smi`) and,
to force a mismatch or an interrupt, the parity check and the progress callback.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import xgboost

from mlbox.errors import UsageError, ValidationError
from mlbox.flavors.base import FitRequest, FitResult
from mlbox.flavors.xgboost import XGBoostFlavor
from mlbox.train import runner

from ..conftest import write_fake_nvidia_smi
from .conftest import FAST_PARAMS, Project


def force_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "parity", lambda *_args: (1.0, 1e-4))


def test_onnx_mismatch_refuses_registration(churn: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    force_mismatch(monkeypatch)
    with pytest.raises(ValidationError) as info:
        churn.train(churn.fast_spec(), register=True)
    assert "--allow-mismatch" in str(info.value) and "not registered" in str(info.value)
    assert churn.count("model_versions") == 0 and churn.count("models") == 0
    (run,) = churn.box.tracking.runs()
    assert run.status == "failed" and "differs from the native model" in (run.error or "")
    assert churn.box.tracking.latest_metrics([run.id])[run.id]["onnx_max_abs_diff"] == 1.0


def test_allow_mismatch_registers_and_records_the_difference(churn: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    force_mismatch(monkeypatch)
    result = churn.train(churn.fast_spec(), register=True, allow_mismatch=True)
    assert result.version is not None
    assert (result.version.onnx_max_abs_diff, result.version.onnx_tolerance) == (1.0, 1e-4)
    assert churn.box.tracking.run(result.run_id).status == "finished"


def test_cli_allow_mismatch(churn: Project, monkeypatch: pytest.MonkeyPatch, cli_run) -> None:  # type: ignore[no-untyped-def]
    force_mismatch(monkeypatch)
    spec = str(churn.fast_spec())
    refused = cli_run("--home", str(churn.home), "train", spec, "--register")
    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the ONNX export differs") and "--allow-mismatch" in lines[0]
    assert churn.count("model_versions") == 0
    allowed = cli_run("--home", str(churn.home), "--json", "train", spec, "--register", "--allow-mismatch")
    assert allowed.exit_code == 0, allowed.stderr
    assert allowed.json()["model"] == "churn:1" and allowed.json()["onnx_max_abs_diff"] == 1.0


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> list[int]:
    """Make Ctrl-C arrive during xgboost's boosting round `step` (from inside its progress callback)."""
    seen: list[int] = []
    real_fit = XGBoostFlavor.fit

    def fit(self: XGBoostFlavor, request: FitRequest) -> FitResult:
        report = request.on_progress
        assert report is not None

        def on_progress(i: int, values: Any) -> None:
            report(i, values)
            seen.append(i)
            if i == step:
                raise KeyboardInterrupt

        return real_fit(self, dataclasses.replace(request, on_progress=on_progress))

    monkeypatch.setattr(XGBoostFlavor, "fit", fit)
    return seen


def test_ctrl_c_marks_the_run_interrupted_and_registers_nothing(churn: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = interrupt_at_step(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        churn.train(churn.fast_spec(), register=True, promote_if_gate="staging")
    assert seen[-1] == 5 < FAST_PARAMS["xgboost"]["n_estimators"]
    (run,) = churn.box.tracking.runs()
    assert run.status == "interrupted" and run.ended_at is not None and run.error == "interrupted by the user"
    assert [s for s, _ in churn.box.tracking.metric_history(run.id, "train_loss")] == seen  # flushed on the way out
    assert churn.count("model_versions") == 0 and churn.count("model_aliases") == 0
    assert churn.box.tracking.run_artifacts(run.id) == []


def test_cli_ctrl_c(churn: Project, monkeypatch: pytest.MonkeyPatch, cli_run) -> None:  # type: ignore[no-untyped-def]
    interrupt_at_step(monkeypatch, 3)
    result = cli_run("--home", str(churn.home), "train", str(churn.fast_spec()), "--register")
    assert result.exit_code == 130
    assert "Traceback" not in result.stderr
    assert [r.status for r in churn.box.tracking.runs()] == ["interrupted"]
    assert churn.count("model_versions") == 0


def test_cli_ctrl_c_is_one_error_line(churn: Project, monkeypatch: pytest.MonkeyPatch, cli_run) -> None:  # type: ignore[no-untyped-def]
    """`main.run` turns KeyboardInterrupt into "error: interrupted" (docs/cli.md: every error is one line on stderr)."""
    interrupt_at_step(monkeypatch, 3)
    result = cli_run("--home", str(churn.home), "train", str(churn.fast_spec()))
    assert result.exit_code == 130
    assert result.stderr.strip() == "error: interrupted"


# devices ----------------------------------------------------------------------


@pytest.mark.parametrize("flavor", ["xgboost", "torch", "sklearn"])
def test_cuda_on_a_cpu_machine_fails_before_a_run(churn: Project, flavor: str) -> None:
    if flavor == "torch":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="device: cuda was asked for, but") as info:
        churn.train(churn.fast_spec(flavor=flavor, device="cuda"))
    assert info.value.hint == "use device: auto or cpu"
    assert churn.count("runs") == 0 and churn.count("training_sets") == 0


def test_fake_gpu_with_cpu_only_xgboost_falls_back_with_the_reason(churn: Project, bin_dir: Path) -> None:
    """nvidia-smi lists an H100, but the installed xgboost has no CUDA: auto trains on the CPU and says why."""
    if xgboost.build_info().get("USE_CUDA"):
        pytest.skip("this xgboost is built with CUDA")
    write_fake_nvidia_smi(bin_dir)
    result = churn.train(churn.fast_spec(device="auto"))
    assert result.device == "cpu"
    info = churn.box.tracking.run(result.run_id)
    assert info.device == "cpu"
    assert info.tags["device_reason"] == f"auto: falling back to CPU (xgboost {xgboost.__version__} was built without CUDA (the xgboost-cpu package))"
    with pytest.raises(UsageError, match="built without CUDA"):
        churn.train(churn.fast_spec(device="cuda"))
    assert churn.count("runs") == 1


def test_auto_picks_cuda_when_the_flavor_can(churn: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU boundary faked: xgboost says CUDA is usable; the fit is asked for cuda (and run on the CPU here)."""
    requests: list[FitRequest] = []
    real_fit = XGBoostFlavor.fit

    def fit(self: XGBoostFlavor, request: FitRequest) -> FitResult:
        requests.append(request)
        result = real_fit(self, dataclasses.replace(request, device="cpu"))
        result.device = "cuda"  # what a GPU fit reports
        return result

    monkeypatch.setattr(XGBoostFlavor, "cuda_available", lambda self: (True, ""))
    monkeypatch.setattr(XGBoostFlavor, "fit", fit)
    result = churn.train(churn.fast_spec(device="auto"))
    assert [r.device for r in requests] == ["cuda"]
    assert result.device == "cuda" and result.device_reason == "auto: a GPU is available"
    info = churn.box.tracking.run(result.run_id)
    assert info.device == "cuda" and info.tags["device_reason"] == "auto: a GPU is available"

    # device: cpu in the spec wins over an available GPU
    requests.clear()
    result = churn.train(churn.fast_spec(device="cpu"))
    assert [r.device for r in requests] == ["cpu"] and result.device_reason == "device: cpu in the spec"
