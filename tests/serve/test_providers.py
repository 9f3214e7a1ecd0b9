"""onnxruntime execution providers: CUDA first when present, the provider each session really got, and where it shows.

A GPU that is not on this machine is the one boundary faked here (a providers list, a session
that says it runs on CUDA); everything else is a real onnxruntime session of a real model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlbox.api.app import build_app
from mlbox.api.context import ServeContext
from mlbox.config import load_settings
from mlbox.hardware import choose_providers, onnx_providers
from mlbox.serve.runtime import ModelCache, session_provider

from ..conftest import OS_USER
from .conftest import AsgiClient, Template, copy_box, open_box

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@pytest.mark.parametrize(
    ("available", "chosen"),
    [
        ([CPU], [CPU]),
        (["AzureExecutionProvider", CPU], [CPU]),
        ([CUDA, CPU], [CUDA, CPU]),
        ([CPU, CUDA], [CUDA, CPU]),  # preference order, not the order onnxruntime lists them in
        (["TensorrtExecutionProvider", CUDA, CPU], [CUDA, CPU]),
        ([], [CPU]),
    ],
)
def test_cuda_is_chosen_first_when_available(available: list[str], chosen: list[str]) -> None:
    assert choose_providers(available) == chosen


def test_onnx_providers_on_a_gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", CUDA, CPU])
    info = onnx_providers()
    assert info["available"] == ["TensorrtExecutionProvider", CUDA, CPU]
    assert info["chosen"] == [CUDA, CPU] and info["default"] == CUDA


def test_onnx_providers_here() -> None:
    info = onnx_providers()
    assert info["default"] == (CUDA if CUDA in ort.get_available_providers() else CPU)
    assert info["package"].startswith("onnxruntime")


class _CudaSession:
    def get_providers(self) -> list[str]:
        return [CUDA, CPU]


def test_the_provider_recorded_is_the_one_the_session_reports() -> None:
    assert session_provider(_CudaSession()) == CUDA


@pytest.fixture(scope="module")
def home(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = copy_box(serve_template, tmp_path_factory.mktemp("providers") / "box")
    with open_box(home) as box:
        box.deployments.create("gpu", "churn:1", OS_USER)
        box.deployments.canary("gpu", "churn:2", 20, OS_USER)
    return home


def test_a_cuda_request_without_a_gpu_runs_and_says_cpu(home: Path) -> None:
    with open_box(home) as box:
        model = ModelCache(box.registry, 1, [CUDA, CPU]).get("churn:1")
    expected = CUDA if CUDA in ort.get_available_providers() else CPU
    assert model.provider == expected == model.session.get_providers()[0]


@pytest.fixture(scope="module")
def api(home: Path) -> Iterator[AsgiClient]:
    ctx = ServeContext(load_settings(home, environ={}))
    ctx.start()
    try:
        yield AsgiClient(build_app(ctx))
    finally:
        ctx.close()


def test_readyz_and_metrics_say_which_provider_each_model_runs_on(api: AsgiClient, serve_template: Template) -> None:
    here = onnx_providers()["default"]
    ready = api.get("/readyz", headers={"Authorization": f"Bearer {serve_template.tokens['viewer']}"}).json()
    assert ready["models"]["gpu"] == {"primary": {"model": "churn:1", "provider": here}, "canary": {"model": "churn:2", "provider": here}}
    families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
    info = {(s.labels["deployment"], s.labels["variant"]): (s.labels["model"], s.labels["provider"], s.value)
            for s in families["mlbox_model_info"].samples}  # fmt: skip
    assert info[("gpu", "primary")] == ("churn:1", here, 1.0)
    assert info[("gpu", "canary")] == ("churn:2", here, 1.0)
