"""Fixtures and helpers of the feature-store tests: a real box in tmp_path, frame normalisation.

The root tests/conftest.py already gives every test a clean environment (no MLBOX_*
variables, HOME inside tmp_path, the kernel OS user `OS_USER`) and the `home`/`box` fixtures.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.features.store import FeatureStore

from ..conftest import OS_USER

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_worker.py"
UTC_BASE = pd.Timestamp("2025-03-01T00:00:00Z")


@pytest.fixture
def fs(box: Box) -> FeatureStore:
    return box.features


def open_box(home: Path, environ: dict[str, str] | None = None) -> Box:
    """A new Box object on an existing (or new) box: its feature store sweeps on first use."""
    return Box.create(load_settings(home, environ=environ if environ is not None else {}), OS_USER)


@pytest.fixture
def make_box(tmp_path: Path) -> Iterator[Any]:
    """`make_box(environ=None, toml=None) -> Box`: another box in tmp_path, closed after the test."""
    opened: list[Box] = []
    counter = iter(range(1000))

    def make(environ: dict[str, str] | None = None, toml: str | None = None) -> Box:
        home = tmp_path / f"box{next(counter)}"
        home.mkdir()
        if toml is not None:
            (home / "mlbox.toml").write_text(toml)
        b = open_box(home, environ)
        opened.append(b)
        return b

    yield make
    for b in opened:
        b.close()


def files_under(path: Path) -> set[str]:
    """Every plain file under `path`, relative."""
    if not path.exists():
        return set()
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def py(value: Any) -> Any:
    """A frame cell as a plain Python value; every kind of missing value becomes None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes, pd.Timestamp)):
        return value.item()
    return value


def column(frame: pd.DataFrame, name: str) -> list[Any]:
    return [py(v) for v in frame[name].tolist()]


def run_worker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), *args], env=dict(os.environ), capture_output=True, text=True, timeout=timeout
    )


def popen_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def online_rows(fs: FeatureStore, features: list[str], entity_rows: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    """`get_online_features` as one dict per entity row, whether the API answers row-wise or column-wise."""
    result = fs.get_online_features(features, entity_rows, **kw)
    if isinstance(result, dict):
        n = len(entity_rows)
        for name, values in result.items():
            assert len(values) == n, f"column {name!r} has {len(values)} values for {n} entity rows"
        return [{name: values[i] for name, values in result.items()} for i in range(n)]
    return list(result)
