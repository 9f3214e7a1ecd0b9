"""What a run ran on: Python, platform, key package versions, and the code revision."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "mlbox", "numpy", "pandas", "pyarrow", "duckdb", "scikit-learn", "xgboost", "xgboost-cpu",
    "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "skl2onnx", "onnxmltools",
)  # fmt: skip


def environment() -> tuple[dict[str, Any], str]:
    """The environment record and its hash (same packages and Python → same hash)."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": packages,
    }
    digest = hashlib.sha256(json.dumps([env["python"], env["machine"], packages], sort_keys=True).encode()).hexdigest()
    return env, digest[:16]


def code_revision(directory: Path) -> tuple[str | None, bool | None]:
    """(git commit, dirty) of the repository holding `directory`, or (None, None) outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=False
        )
        if rev.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return rev.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return None, None
