"""mlbox: a single-node MLOps appliance.

The package root re-exports a small public surface. Heavy names load on first use, so
`import mlbox` stays fast and never imports torch, xgboost, bentoml or textual.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mlbox._version import __version__
from mlbox.config import Settings, load_settings
from mlbox.errors import MlboxError

if TYPE_CHECKING:
    from mlbox.box import Box
    from mlbox.features.definitions import Entity, FeatureView, Field
    from mlbox.tracking.run import ActiveRun

__all__ = [
    "Box",
    "Entity",
    "FeatureView",
    "Field",
    "MlboxError",
    "Settings",
    "__version__",
    "init",
    "load_settings",
    "open_box",
    "start_run",
]

_LAZY = {
    "Box": "mlbox.box",
    "Entity": "mlbox.features.definitions",
    "Field": "mlbox.features.definitions",
    "FeatureView": "mlbox.features.definitions",
}


def init(path: str | os.PathLike[str] = ".", template: str = "tabular-classification", *, admin: str | None = None) -> Box:
    """Create a project from `template` in `path` (new or empty) and its box; return the opened Box.

    The same as `mlbox init PATH --template NAME`: the same checks and errors (an unknown
    template is NotFound, a folder that already holds a project a Conflict), and the OS user
    (or `admin`) becomes the box's admin. Close the box when done, or use it in a `with`:

        with mlbox.init("churn", template="tabular-classification") as box:
            box.features.apply(box.features.load())
    """
    from pathlib import Path

    from mlbox.box import Box
    from mlbox.security.osuser import effective_os_user

    if admin is None:
        admin = effective_os_user()
    box, _ = Box.init_project(Path(path).expanduser().resolve(), template, admin)
    return box


def open_box(home: str | None = None) -> Box:
    """Open the box at `home` (or the one chosen by MLBOX_HOME / the nearest mlbox.toml / ~/.mlbox)."""
    from mlbox.box import Box

    return Box(load_settings(home))


def start_run(experiment: str, name: str | None = None, home: str | None = None) -> ActiveRun:
    """Start a tracked run in the box at `home` (default resolution); the box closes with the run.

        with mlbox.start_run(experiment="churn") as run:
            run.log_params({"lr": 0.1})
            run.log_metric("loss", 0.3, step=1)
    """
    box = open_box(home)
    active = box.start_run(experiment, name)
    end = active.end

    def end_and_close(status: str = "finished", error: str | None = None) -> None:
        try:
            end(status, error)
        finally:
            box.close()

    active.end = end_and_close  # type: ignore[method-assign]
    return active


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlbox' has no attribute {name!r}")
