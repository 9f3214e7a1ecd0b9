"""What compute this machine has: NVIDIA GPUs through `nvidia-smi` (and why there are none), onnxruntime's providers.

Detection never imports torch or xgboost (seconds of import time); it asks the driver's
own tool, which is what the scheduler needs anyway (memory and utilisation per device).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mlbox.config import process_environ

QUERY = "index,name,memory.total,memory.used,utilization.gpu,uuid"
# onnxruntime execution providers mlbox serves on, best first: CUDA when the onnxruntime-gpu
# build and a GPU are there, else CPU. (TensorRT is left out: it builds an engine per input
# shape at first use, seconds that a request would wait for.)
PROVIDER_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int
    uuid: str = ""

    @property
    def memory_free_mb(self) -> int:
        return self.memory_total_mb - self.memory_used_mb


@dataclass(frozen=True)
class Inventory:
    """GPUs found and, when there are none, the reason (shown by `mlbox doctor`)."""

    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    reason: str = ""

    @property
    def mode(self) -> str:
        return "cuda" if self.gpus else "cpu"


def _int(text: str) -> int:
    try:
        return int(float(text.strip()))
    except ValueError:
        return 0


def parse_nvidia_smi(output: str) -> tuple[Gpu, ...]:
    """Parse `nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits` output."""
    gpus = []
    for line in output.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        gpus.append(
            Gpu(_int(parts[0]), parts[1], _int(parts[2]), _int(parts[3]), _int(parts[4]), parts[5] if len(parts) > 5 else "")
        )
    return tuple(gpus)


def detect(environ: Mapping[str, str] | None = None, timeout: float = 10.0) -> Inventory:
    """The NVIDIA GPUs visible to this process (honouring CUDA_VISIBLE_DEVICES)."""
    env = process_environ() if environ is None else environ
    smi = shutil.which("nvidia-smi")
    if smi is None:
        driver = Path("/proc/driver/nvidia/version").exists()
        why = "nvidia-smi not found" + (
            " although an NVIDIA driver is loaded" if driver else " and no NVIDIA driver is loaded (/proc/driver/nvidia)"
        )
        return Inventory((), f"no NVIDIA GPU: {why}")
    try:
        proc = subprocess.run(
            [smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Inventory((), f"no usable NVIDIA GPU: nvidia-smi failed ({exc})")
    if proc.returncode != 0:
        first = (proc.stderr or proc.stdout).strip().splitlines()[:1]
        return Inventory((), f"no usable NVIDIA GPU: nvidia-smi exited {proc.returncode}: {' '.join(first)}")
    gpus = parse_nvidia_smi(proc.stdout)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        gpus = tuple(g for g in gpus if str(g.index) in wanted or g.uuid in wanted)
        if not gpus:
            return Inventory((), f"no NVIDIA GPU visible: CUDA_VISIBLE_DEVICES={visible!r} hides them")
    if not gpus:
        return Inventory((), "no NVIDIA GPU: nvidia-smi lists none")
    return Inventory(gpus, "")


def choose_providers(available: Sequence[str]) -> list[str]:
    """The providers to open a session with, best first, from those onnxruntime reports available."""
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    return chosen or ["CPUExecutionProvider"]


def onnx_providers() -> dict[str, Any]:
    """onnxruntime's build and providers here: `available`, `chosen` (what sessions ask for), `default` (the first)."""
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    chosen = choose_providers(available)
    build = "none"
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            build = f"{dist} {metadata.version(dist)}"
            break
        except metadata.PackageNotFoundError:
            continue
    return {"package": build, "available": available, "chosen": chosen, "default": chosen[0]}
