"""Fixtures of the TUI tests: one small trained box per session, copied per test.

The template is a `tabular-classification` project (the quickstart's template) with its feature
views applied and ingested, and two registered versions of one xgboost model (`churn:1`, `churn:2`, trained
on a 600-row Parquet file), a deployment `churn_api` serving churn:1 with churn:2 as a 10% canary,
two queued jobs (one by the admin, one by `ana`), one stored drift check of the deployment
(written through the monitor's own repository, as `mlbox monitor check` stores it), and one user per role. `serve.port` is 9 (the
discard port, where nothing listens), so Pulse reports the server down without probing someone's
real server. Tests copy the template, so every box is private and real.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

from ..conftest import OS_USER

ENVIRON = {"MLBOX_SERVE_PORT": "9"}
USERS = {"viewer": "vic", "ml-engineer": "mel", "data-scientist": "ana"}
DRIFT = {
    "deployment": "churn_api", "checked_at": "2026-11-30T12:00:00.000000Z", "window": {"last": "1d"}, "drifted": True,
    "variants": {
        "primary": {"model": "churn:1", "rows": 500, "drifted": True, "share": 0.67, "weighted_share": 0.8,
                    "features": {"x0": {"drifted": True}, "x1": {"drifted": True}, "x2": {"drifted": False}}},
        "canary": {"model": "churn:2", "rows": 60, "drifted": False, "share": 0.0, "weighted_share": 0.0,
                   "features": {"x0": {"drifted": False}, "x1": {"drifted": False}, "x2": {"drifted": False}}},
    },
}  # fmt: skip


def frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(3)})
    out["y"] = (out.x0 + 0.5 * out.x1 + 0.3 * rng.logistic(size=n) > 0).astype(int)
    return out


def open_box(home: Path, actor: str = OS_USER) -> Box:
    box = Box(load_settings(home, environ=ENVIRON), actor=actor)
    return box


def features_box(home: Path) -> Box:
    """The box of the project at `home` (made by `init_project`), created with its feature views applied and ingested."""
    box = Box.create(load_settings(home, environ=ENVIRON), OS_USER)
    fs = box.features
    fs.apply(fs.load(), OS_USER)
    for view in fs.catalog.latest_views():
        fs.ingest(view.name, actor=OS_USER)
    return box


@dataclass(frozen=True)
class Template:
    home: Path


@pytest.fixture(scope="session")
def tui_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    from threadpoolctl import threadpool_limits

    from mlbox.monitor.records import Records
    from mlbox.project import init_project

    home = tmp_path_factory.mktemp("tui-template") / "box"
    init_project(home, "tabular-classification")
    box = features_box(home)
    try:
        frame().to_parquet(home / "plain.parquet")
        for depth in (3, 2):
            raw = {
                "experiment": "churn", "model": "churn", "task": "classification", "target": "y", "flavor": "xgboost",
                "data": {"path": "plain.parquet"}, "device": "cpu",
                "params": {"n_estimators": 5, "max_depth": depth, "learning_rate": 0.3},
            }  # fmt: skip
            with threadpool_limits(limits=1):
                train(parse_spec(raw, "tui-test spec", home), store=None, tracking=box.tracking, registry=box.registry,
                      actor=OS_USER, register=True)  # fmt: skip
        for role, name in USERS.items():
            box.identity.add_user(OS_USER, name, role, os_user=name)
        # by mel, not the OS user: the snapshots show who changed a deployment, and must not show the OS user's name
        box.deployments.create("churn_api", "churn:1", "mel")
        box.deployments.canary("churn_api", "churn:2", 10.0, "mel")
        box.jobs.submit("command", {"argv": ["true"]}, OS_USER)
        box.jobs.submit("command", {"argv": ["sleep", "1"]}, "ana")
        Records(box.db).add_check("churn_api", "drift", DRIFT, "drift", "mel")
    finally:
        box.close()
    return Template(home)


@pytest.fixture
def tui_home(tui_template: Template, tmp_path: Path) -> Iterator[Path]:
    dest = tmp_path / "box"
    shutil.copytree(tui_template.home, dest)
    yield dest
