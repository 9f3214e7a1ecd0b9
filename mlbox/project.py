"""Projects from templates: `mlbox init DIR --template NAME` copies a template into a new box."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlbox.errors import Conflict, NotFound, UsageError

DEFAULT_TEMPLATE = "tabular-classification"
REQUIRED_FILES = ("mlbox.toml", "features.yaml", "train.yaml", "README.md")


def templates_dir() -> Path:
    """Templates ship inside the wheel as mlbox/_templates; an editable install reads the repo's templates/."""
    packaged = Path(__file__).resolve().parent / "_templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def list_templates() -> list[str]:
    root = templates_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "mlbox.toml").is_file()) if root.is_dir() else []


def init_project(dest: Path, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """Copy `template` into `dest` (new or empty, or already the same project); return the files written."""
    names = list_templates()
    if template not in names:
        raise NotFound(f"no template {template!r}", hint=f"templates are {', '.join(names)}")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a folder")
    if (dest / "mlbox.toml").exists():
        raise Conflict(f"{dest} already holds an mlbox project (mlbox.toml)")
    source = templates_dir() / template
    files = [p.relative_to(source) for p in sorted(source.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    for rel in files:
        if (dest / rel).exists():
            raise Conflict(f"{dest / rel} already exists; init into a new or empty folder")
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, dest / rel)
    return [str(rel) for rel in files]
