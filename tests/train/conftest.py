"""Fixtures of the training tests: `mlbox init`-ed boxes with their views ingested, specs, trained registries.

Building a box from a template (init, apply, ingest 26,000 rows) takes about a second, and a
registered model a few more, so each is built once per session under tmp_path_factory and
copied into the test's own tmp_path: every test gets a private, real box (SQLite, Parquet,
artifact files) without paying for the setup again. The root tests/conftest.py still gives
every test a clean environment (no MLBOX_* variables, the login variables lying about the OS user, no nvidia-smi on PATH).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.project import init_project
from mlbox.train.runner import TrainResult, train
from mlbox.train.spec import TrainSpec, load_spec

from ..conftest import OS_USER

# Small enough for the whole package to run in well under two minutes on two cores.
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "xgboost": {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.3},
    "torch": {"epochs": 5, "hidden": [16], "lr": 0.01},
    "sklearn": {"max_iter": 30},
}


@dataclass
class Project:
    """A box made by `mlbox init` from a template, with every view of its features.yaml ingested."""

    home: Path
    box: Box

    def spec(self, name: str = "train.yaml", **changes: Any) -> Path:
        """Write the template's train.yaml with `changes` applied (None deletes a key) as `name`; its path."""
        raw = yaml.safe_load((self.home / "train.yaml").read_text())
        for key, value in changes.items():
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = value
        path = self.home / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def fast_spec(self, name: str = "fast.yaml", flavor: str = "xgboost", **changes: Any) -> Path:
        """The template spec with `flavor` and its small params (see FAST_PARAMS)."""
        return self.spec(name, **{"flavor": flavor, "params": FAST_PARAMS[flavor], **changes})

    def train(self, spec: Path | TrainSpec, **options: Any) -> TrainResult:
        parsed = load_spec(spec) if isinstance(spec, Path) else spec
        return train(
            parsed,
            store=self.box.features if parsed.data.labels else None,
            tracking=self.box.tracking,
            registry=self.box.registry,
            actor=OS_USER,
            **options,
        )

    def count(self, table: str) -> int:
        return int(self.box.db.scalar(f"SELECT count(*) FROM {table}"))


def open_project(home: Path) -> Box:
    box = Box.create(load_settings(home, environ={}), OS_USER)
    box.actor = OS_USER
    return box


def build_project(home: Path, template: str) -> Path:
    """`mlbox init` from `template`, apply features.yaml, ingest every view from its declared source."""
    init_project(home, template)
    with open_project(home) as box:
        fs = box.features
        fs.apply(fs.load(), OS_USER)
        for view in fs.catalog.latest_views():
            fs.ingest(view.name, actor=OS_USER)
    return home


def copy_project(source: Path, dest: Path) -> Iterator[Project]:
    shutil.copytree(source, dest)
    box = open_project(dest)
    try:
        yield Project(dest, box)
    finally:
        box.close()


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_library() -> Iterator[None]:
    """Run OpenMP/BLAS single-threaded: on a busy 2-core machine OpenMP's spinning threads make a
    HistGradientBoosting fit 50x slower (0.3 s → 18 s). The runtimes must be loaded for the limit to reach them."""
    import sklearn.ensemble  # noqa: F401
    import torch  # noqa: F401
    import xgboost  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def churn_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("template") / "churn", "tabular-classification")


@pytest.fixture(scope="session")
def regression_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("template") / "houses", "regression")


@pytest.fixture
def churn(churn_template: Path, tmp_path: Path) -> Iterator[Project]:
    """A private copy of the churn (tabular-classification) project: no runs, no models yet."""
    yield from copy_project(churn_template, tmp_path / "churn")


@pytest.fixture
def houses(regression_template: Path, tmp_path: Path) -> Iterator[Project]:
    """A private copy of the house-prices (regression) project."""
    yield from copy_project(regression_template, tmp_path / "houses")


@pytest.fixture(scope="session")
def registered_template(churn_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The churn project with two xgboost runs registered as churn:1 and churn:2.

    churn:2 differs from churn:1 in max_depth (3 → 2) and drops the `late_payments` feature.
    """
    home = tmp_path_factory.mktemp("registered") / "churn"
    for project in copy_project(churn_template, home):
        project.train(project.fast_spec("v1.yaml"), register=True)
        project.train(
            project.fast_spec(
                "v2.yaml",
                params={**FAST_PARAMS["xgboost"], "max_depth": 2},
                data={**yaml.safe_load((home / "train.yaml").read_text())["data"], "drop": ["late_payments"]},
            ),
            register=True,
        )
    return home


@pytest.fixture
def registered(registered_template: Path, tmp_path: Path) -> Iterator[Project]:
    """A private copy of the churn project holding churn:1 and churn:2 (see registered_template)."""
    yield from copy_project(registered_template, tmp_path / "churn")
