"""Durability: fsync a file or a folder (a rename or a new entry in a folder lasts only once the folder is fsynced)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file's contents, or a directory's entries."""
    fd = os.open(Path(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
