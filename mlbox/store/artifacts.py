"""Content-addressed artifact files: `artifacts/<ab>/<sha256>`, written once, verified on read.

A file is copied under a temporary name, fsynced and renamed to its hash; writing the
same content twice stores it once. Nothing refers to an artifact until a catalog row that
names its hash commits, so a crash leaves at most an unreferenced file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlbox.errors import NotFound, StoreError

TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StoreError(f"not an artifact hash: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, src: Path) -> Artifact:
        """Store a copy of `src`; returns its hash and size."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        h = hashlib.sha256()
        size = 0
        with src.open("rb") as fin, tmp.open("wb") as fout:
            while chunk := fin.read(1 << 20):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        digest = h.hexdigest()
        target = self.path(digest)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            tmp.unlink()
        else:
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        return Artifact(digest, size)

    def open_verified(self, sha256: str) -> Path:
        """The path of an artifact after checking its content still hashes to its name."""
        path = self.path(sha256)
        if not path.exists():
            raise NotFound(f"artifact {sha256[:12]} is missing from {self.root}")
        actual = file_sha256(path)
        if actual != sha256:
            raise StoreError(f"artifact {sha256[:12]} is corrupt: its content hashes to {actual[:12]}")
        return path

    def copy_to(self, sha256: str, dest: Path) -> Path:
        path = self.open_verified(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        return dest
