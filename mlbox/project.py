"""Projects from templates: `mlbox init DIR --template NAME` copies a template into a new box."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlbox import clock
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
    bring_up_to_date([dest / rel for rel in files if rel.parts[0] == "data" and rel.suffix == ".csv"], clock.now())
    return [str(rel) for rel in files]


UTC_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
STAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def bring_up_to_date(paths: list[Path], now: datetime) -> int:
    """Move every UTC timestamp in the sample data forward by whole weeks, so the newest is in the past week.

    A template's data were made on one day; a view's TTL and the online store's answers judge values
    against today. Shifting all of them by the same whole number of weeks keeps every interval,
    weekday and point-in-time match, and the demo behaves on the day it runs as on the day it was made.
    Returns the days added (0 when the data are already recent).
    """
    texts = {p: p.read_text(encoding="utf-8") for p in paths}
    stamps = [m.group() for text in texts.values() for m in UTC_STAMP.finditer(text)]
    if not stamps:
        return 0
    newest = datetime.strptime(max(stamps), STAMP_FORMAT).replace(tzinfo=UTC)  # same format: text order is time order
    weeks = (now - newest) // timedelta(weeks=1)
    if weeks <= 0:
        return 0
    shift = timedelta(weeks=weeks)

    def moved(match: re.Match[str]) -> str:
        return (datetime.strptime(match.group(), STAMP_FORMAT) + shift).strftime(STAMP_FORMAT)

    for path, text in texts.items():
        path.write_text(UTC_STAMP.sub(moved, text), encoding="utf-8")
    return shift.days
