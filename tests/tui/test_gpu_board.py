"""Pulse's GPU board: every GPU nvidia-smi reports, its memory and load, and the running job holding it.

The GPU is the one true boundary here: a stand-in `nvidia-smi` on PATH prints what the real one
prints for `--query-gpu=... --format=csv,noheader,nounits`; everything after it is the real code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from mlbox.config import load_settings
from mlbox.console import service
from mlbox.tui.app import MlboxApp
from mlbox.tui.local import LocalClient

from ._pilot import drive
from .conftest import ENVIRON, open_box

SMI = """#!/bin/sh
echo "0, NVIDIA H200, 143771, 40960, 87, GPU-aaaa"
echo "1, NVIDIA H200, 143771, 512, 0, GPU-bbbb"
"""


@pytest.fixture
def two_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(service, "_probed", [0.0, None])  # no inventory cached from an earlier test


def test_the_board_shows_each_gpu_and_the_job_holding_it(tui_home: Path, two_gpus: None) -> None:
    with open_box(tui_home) as box, box.db.atomic():  # job 1 running on GPU 0, as the worker records a placement
        box.db.execute("UPDATE jobs SET status = 'running', devices = '[0]' WHERE id = 1")
    pulse = LocalClient(load_settings(tui_home, environ=ENVIRON)).pulse()
    assert pulse.devices == [
        {"index": 0, "name": "NVIDIA H200", "memory_total_mb": 143771, "memory_used_mb": 40960, "utilization_pct": 87, "job": 1},
        {"index": 1, "name": "NVIDIA H200", "memory_total_mb": 143771, "memory_used_mb": 512, "utilization_pct": 0, "job": None},
    ]  # fmt: skip
    seen: dict[str, str] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        seen["jobs"] = str(app.screen.query_one("#jobs", Static).render())

    drive(tui_home, script, size=(100, 30))
    assert "GPU 0 40.0/140 GiB 87% → job 1" in seen["jobs"]
    assert "GPU 1 0.5/140 GiB 0% free" in seen["jobs"]


def test_without_a_gpu_the_board_says_cpu(tui_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(service, "_probed", [0.0, None])
    assert LocalClient(load_settings(tui_home, environ=ENVIRON)).pulse().devices == []
    seen: dict[str, str] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        seen["jobs"] = str(app.screen.query_one("#jobs", Static).render())

    drive(tui_home, script)
    assert "GPUs: none (cpu)" in seen["jobs"]
