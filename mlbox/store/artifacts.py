"""Content-addressed artifact files: `artifacts/<ab>/<sha256>`, written once, verified (sha256 + HMAC) on read.

Integrity: `put` also writes `<sha256>.hmac`, the HMAC-SHA256 of the file's bytes under the
box's artifact key (`keys/artifacts.key`, 0600, created on first use like the audit key but a
separate key, so neither purpose's key is exposed or rotated by the other). `open_verified`
checks both before anything loads a file: a changed byte fails the sha256, and a file replaced
together with a recomputed sha256 in meta.db fails (or lacks) the HMAC, which needs the key.

A file is copied under a temporary name, fsynced and renamed to its hash; writing the
same content twice stores it once. Nothing refers to an artifact until a catalog row that
names its hash commits, so a crash leaves at most an unreferenced file, and temporary
names (`.tmp-<pid>-...`, files or scratch folders) of dead processes are swept on open.

Removing unreferenced files races with a writer that has stored a file and not yet
committed the row naming it. `put` therefore always renames a freshly written copy onto
the hash (even when it exists), and `remove_unreferenced` moves a candidate aside first and
puts it back when the moved file turns out younger than the grace period.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlbox.errors import NotFound, StoreError
from mlbox.store.audit import load_or_create_key

TMP_PREFIX = ".tmp-"
MAC_SUFFIX = ".hmac"
KEY_NAME = "artifacts.key"
_TMP_PID = re.compile(rf"{re.escape(TMP_PREFIX)}(\d+)-")
_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Artifact:
    """One stored file: its content hash and size."""

    sha256: str
    size: int


@dataclass(frozen=True)
class StoredFile:
    """A content-addressed file found on disk, with its age (for the unreferenced-file grace period)."""

    sha256: str
    size: int
    age_s: float


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a permission error means it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_digests(path: Path, key: bytes) -> tuple[str, str]:
    """(sha256, HMAC-SHA256 under `key`) of a file's bytes, read once."""
    h, mac = hashlib.sha256(), hmac.new(key, digestmod=hashlib.sha256)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            mac.update(chunk)
    return h.hexdigest(), mac.hexdigest()


class IntegrityError(StoreError):
    """An artifact whose bytes no longer match its sha256 or its HMAC: refused before loading."""


@dataclass(frozen=True)
class Problem:
    """Why a stored artifact would be refused: `kind` is missing, corrupt, unsigned or forged; `text` says it."""

    kind: str
    text: str


class ArtifactStore:
    """The `artifacts/` folder: content-addressed files, scratch folders, and their crash leftovers."""

    def __init__(self, root: Path, *, sweep: bool = True, key_path: Path | None = None) -> None:
        self.root = root
        self.key_path = key_path or root.parent / "keys" / KEY_NAME
        self._key: bytes | None = None
        if sweep:
            self.sweep_temporary()

    @property
    def key(self) -> bytes:
        """The box's artifact HMAC key (never logged), created 0600 on first use."""
        if self._key is None:
            self._key = load_or_create_key(self.key_path)
        return self._key

    # crash leftovers ---------------------------------------------------------
    def temporary(self) -> list[Path]:
        """Temporary files and scratch folders whose writing process is gone."""
        if not self.root.is_dir():
            return []
        out = []
        for entry in os.scandir(self.root):
            match = _TMP_PID.match(entry.name)
            if entry.name.startswith(TMP_PREFIX) and not (match and pid_alive(int(match.group(1)))):
                out.append(Path(entry.path))
        return sorted(out)

    def sweep_temporary(self) -> list[Path]:
        """Delete the temporary files and scratch folders of dead processes; what was removed."""
        removed = []
        for path in self.temporary():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private folder inside the box for files on their way in; removed on exit, swept if the process dies."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def stored(self) -> Iterator[StoredFile]:
        """Every content-addressed file under the root."""
        if not self.root.is_dir():
            return
        now = time.time()
        for folder in os.scandir(self.root):
            if len(folder.name) != 2 or not folder.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(folder.path):
                if _HASH.fullmatch(entry.name) and entry.name.startswith(folder.name):
                    st = entry.stat(follow_symlinks=False)
                    yield StoredFile(entry.name, st.st_size, max(0.0, now - st.st_mtime))

    def unreferenced(self, referenced: set[str], grace_s: float) -> list[StoredFile]:
        """Stored files no catalog row names, older than `grace_s` (younger ones may be about to be named)."""
        return [f for f in self.stored() if f.sha256 not in referenced and f.age_s >= grace_s]

    def remove_unreferenced(self, referenced: set[str], grace_s: float) -> list[StoredFile]:
        """Delete unreferenced files older than `grace_s`; call it holding the catalog's write lock.

        Holding the lock, no row naming a new hash can commit meanwhile. Each candidate is
        renamed aside before its age is read from the moved file itself, so a `put` that
        rewrote it in between (fresh mtime) is seen and the file is put back.
        """
        removed = []
        for candidate in self.unreferenced(referenced, grace_s):
            path = self.path(candidate.sha256)
            aside = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            if time.time() - aside.stat().st_mtime < grace_s:
                os.replace(aside, path)
                continue
            aside.unlink()
            self._drop_mac(candidate.sha256)
            removed.append(candidate)
        return removed

    def _drop_mac(self, sha256: str) -> None:
        """Remove a deleted file's HMAC, re-signing instead when a `put` raced in a fresh copy meanwhile."""
        self.mac_path(sha256).unlink(missing_ok=True)
        path = self.path(sha256)
        if path.exists():
            actual, mac = file_digests(path, self.key)
            if actual == sha256:
                self._write_mac(sha256, mac)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StoreError(f"not an artifact hash: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def mac_path(self, sha256: str) -> Path:
        return self.path(sha256).with_name(sha256 + MAC_SUFFIX)

    def recorded_mac(self, sha256: str) -> str | None:
        """The HMAC recorded when the artifact was written (None: none, e.g. written by an older mlbox)."""
        try:
            return self.mac_path(sha256).read_text().strip()
        except FileNotFoundError:
            return None

    def _write_mac(self, sha256: str, mac: str) -> None:
        tmp = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        tmp.write_text(mac)
        os.chmod(tmp, 0o444)
        os.replace(tmp, self.mac_path(sha256))

    def put(self, src: Path) -> Artifact:
        """Store a copy of `src`; returns its hash and size."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        h, mac = hashlib.sha256(), hmac.new(self.key, digestmod=hashlib.sha256)
        size = 0
        with src.open("rb") as fin, tmp.open("wb") as fout:
            while chunk := fin.read(1 << 20):
                h.update(chunk)
                mac.update(chunk)
                fout.write(chunk)
                size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        digest = h.hexdigest()
        target = self.path(digest)
        target.parent.mkdir(exist_ok=True)
        # Replace even when the hash exists (same bytes): the fresh mtime keeps a concurrent
        # `remove_unreferenced` off it until this writer's catalog row commits.
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
        self._write_mac(digest, mac.hexdigest())  # after the file: a reader never finds a MAC without its file
        return Artifact(digest, size)

    def problem(self, sha256: str) -> Problem | None:
        """What is wrong with a stored artifact (missing, sha256 or HMAC mismatch, no HMAC); None when it verifies."""
        path = self.path(sha256)
        if not path.is_file():
            return Problem("missing", f"is missing from {self.root}")
        actual, mac = file_digests(path, self.key)
        if actual != sha256:
            return Problem("corrupt", f"is corrupt: its content hashes to {actual[:12]}, not {sha256[:12]}")
        recorded = self.recorded_mac(sha256)
        if recorded is None:
            return Problem("unsigned", "has no HMAC record (written by an older mlbox, or replaced together with its catalog row)")
        if not hmac.compare_digest(recorded, mac):
            return Problem("forged", "fails its HMAC check (replaced together with its sha256, or signed with another key)")
        return None

    def open_verified(self, sha256: str, what: str = "") -> Path:
        """The path of an artifact after checking its sha256 and HMAC; `what` names it in the refusal.

        Args:
            sha256: the hash the catalog row names.
            what: e.g. "model churn:3 file model.onnx", so the error says which artifact of what.
        """
        problem = self.problem(sha256)
        if problem is None:
            return self.path(sha256)
        label = f"{what} (artifact {sha256[:12]})" if what else f"artifact {sha256[:12]}"
        if problem.kind == "missing":
            raise NotFound(f"{label} {problem.text}")
        hint = "`mlbox doctor` lists every artifact that fails; restore the box from a backup"
        if problem.kind == "unsigned":
            hint = "if you trust this file, `mlbox doctor --repair` records its HMAC once its sha256 verifies"
        raise IntegrityError(f"refusing to load {label}: it {problem.text}", hint=hint)

    def sign_unsigned(self, referenced: set[str]) -> list[str]:
        """Record an HMAC for each referenced artifact that has none, only after its sha256 verifies; the hashes signed."""
        signed = []
        for sha256 in sorted(referenced):
            path = self.path(sha256)
            if self.recorded_mac(sha256) is not None or not path.is_file():
                continue
            actual, mac = file_digests(path, self.key)
            if actual == sha256:
                self._write_mac(sha256, mac)
                signed.append(sha256)
        return signed

    def copy_to(self, sha256: str, dest: Path, what: str = "") -> Path:
        path = self.open_verified(sha256, what)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        return dest
