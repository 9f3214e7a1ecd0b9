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

Encryption at rest (an encrypted box, store/crypt.py): the stored file is the AES-256-GCM
envelope of the content (`crypt.seal`), and `read_verified` decrypts it in memory only. The
sha256 stays the hash of the *plaintext*: it names the file and is what catalog rows, lineage,
exports and audit entries record, so content addressing is the same in plain and encrypted
boxes and across key rotations. The HMAC covers the *stored bytes* (the ciphertext), so a
changed byte is refused before anything is decrypted; GCM then authenticates the ciphertext
again and the plaintext must hash to the name. (A file name therefore tells someone holding a
candidate model file whether it is in the box, never what a stored file contains.) Because
two encryptions of one content differ (random nonce), publishing a file and its HMAC is
serialised by an flock on `artifacts/.publish.lock`, and a `put` that finds a verified copy
keeps it and only refreshes its mtime; in a plain box that gives the same files as before.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from mlbox.store import crypt
from mlbox.store.audit import load_or_create_key

TMP_PREFIX = ".tmp-"
MAC_SUFFIX = ".hmac"
KEY_NAME = "artifacts.key"
LOCK_NAME = ".publish.lock"
_TMP_PID = re.compile(rf"{re.escape(TMP_PREFIX)}(\d+)-")
_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Artifact:
    """One stored file: its content hash and size (of the plaintext)."""

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


@dataclass(frozen=True)
class _Checked:
    """One verification of a stored file: what is wrong (None: nothing), its plaintext when it verified, its bytes' HMAC."""

    problem: Problem | None
    plaintext: bytes | None = None
    mac: str = ""


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

    @property
    def keyring(self) -> crypt.Keyring | None:
        """The encryption keyring of the box holding this store (None: a plain box, files stored as they are)."""
        return crypt.keyring_for(self.root)

    @property
    def encrypted(self) -> bool:
        """Whether files are stored encrypted: the box is registered as encrypted, or has a keyring not yet loaded."""
        return self.keyring is not None or crypt.box_encrypted(self.root.parent)

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
        """A private folder (0700) inside the box for files on their way in; removed on exit, swept if the process dies.

        Training writes model files here in plaintext before `put` stores them (encrypted in an
        encrypted box): the model libraries' exporters write to paths.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        path.mkdir(mode=0o700)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def stored(self) -> Iterator[StoredFile]:
        """Every content-addressed file under the root (`size`: the stored bytes)."""
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
        renamed aside (under the publish lock, so no `put` is between its file and its HMAC)
        before its age is read from the moved file itself, so a `put` that refreshed it in
        between (fresh mtime) is seen and the file is put back.
        """
        removed = []
        for candidate in self.unreferenced(referenced, grace_s):
            path = self.path(candidate.sha256)
            aside = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
            with self._publishing():
                try:
                    os.rename(path, aside)
                except FileNotFoundError:
                    continue
                if time.time() - aside.stat().st_mtime < grace_s:
                    os.replace(aside, path)
                    continue
                aside.unlink()
                self.mac_path(candidate.sha256).unlink(missing_ok=True)
            removed.append(candidate)
        return removed

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

    @contextlib.contextmanager
    def _publishing(self, *, shared: bool = False) -> Iterator[None]:
        """Across processes, a file and its HMAC change together: writers hold it exclusive, readers shared.

        A reader of a store it cannot write (a read-only copy) reads without the lock: no one publishes there.
        """
        if shared and not self.root.is_dir():
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            if not shared:
                raise
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # writing -----------------------------------------------------------------
    def put(self, src: Path) -> Artifact:
        """Store a copy of the file `src` (encrypted in an encrypted box); returns its hash and size."""
        return self.put_bytes(src.read_bytes())

    def put_bytes(self, data: bytes) -> Artifact:
        """Store `data` (encrypted in an encrypted box); returns the hash and size of `data`."""
        digest = hashlib.sha256(data).hexdigest()
        self._publish(digest, data, keep_existing=True)
        return Artifact(digest, len(data))

    def _stored_form(self, data: bytes) -> bytes:
        keyring = self.keyring
        if keyring is None and self.encrypted:
            raise crypt.KeyProblem(
                f"{self.root.parent} is encrypted and its keyring is not loaded in this process",
                hint="open the box through mlbox (Box / open_meta), which loads its keys",
            )
        return data if keyring is None else crypt.seal(keyring, data)

    def _publish(self, digest: str, data: bytes, *, keep_existing: bool) -> bool:
        """Write `data`'s stored form under `digest` with its HMAC; False when a verified copy was kept instead."""
        self.root.mkdir(parents=True, exist_ok=True)
        blob = self._stored_form(data)
        tmp = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fout:
            fout.write(blob)
            fout.flush()
            os.fsync(fout.fileno())
        os.chmod(tmp, 0o444)
        target = self.path(digest)
        target.parent.mkdir(exist_ok=True)
        try:
            with self._publishing():
                if keep_existing and self._keepable(digest):
                    # The fresh mtime keeps a concurrent `remove_unreferenced` off it until this
                    # writer's catalog row commits (it renames a file aside before reading its age).
                    os.utime(target)
                    return False
                os.replace(tmp, target)
                self._write_mac(digest, hmac.new(self.key, blob, hashlib.sha256).hexdigest())
                return True
        finally:
            tmp.unlink(missing_ok=True)

    def _keepable(self, sha256: str) -> bool:
        """A stored copy that verifies, and is encrypted when the box is, so a new `put` need not replace it."""
        checked = self._check(sha256, decrypt=False, locked=True)
        return checked.problem is None and (not self.encrypted or crypt.is_encrypted(self.path(sha256)))

    # verifying ---------------------------------------------------------------
    def _check(self, sha256: str, *, decrypt: bool = True, locked: bool = False) -> _Checked:
        """Verify one stored file, read once.

        Plain: sha256, then HMAC. Encrypted: the HMAC of the stored bytes first (nothing changed is
        decrypted), then AES-GCM decryption, then the plaintext's sha256. `locked`: the caller holds
        the publish lock already (a second flock of it would wait for itself).
        """
        path = self.path(sha256)
        with contextlib.nullcontext() if locked else self._publishing(shared=True):  # file and HMAC of one publication
            try:
                blob = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                return _Checked(Problem("missing", f"is missing from {self.root}"))
            recorded = self.recorded_mac(sha256)
        mac = hmac.new(self.key, blob, hashlib.sha256).hexdigest()
        sealed = blob.startswith(crypt.ENVELOPE)
        if sealed and recorded is not None and not hmac.compare_digest(recorded, mac):
            why = "its encrypted bytes were changed, or signed with another key"
            return _Checked(Problem("forged", f"fails its HMAC check ({why})"), mac=mac)
        plaintext = blob
        if sealed and (decrypt or recorded is None):
            keyring = self.keyring
            if keyring is None:
                raise crypt.KeyProblem(
                    f"artifact {sha256[:12]} is encrypted and no key for it is loaded in this process",
                    hint="open the box through mlbox (Box / open_meta), which loads its keys",
                )
            try:
                plaintext = crypt.unseal(keyring, blob, "the stored file")
            except crypt.KeyProblem as exc:
                return _Checked(Problem("corrupt", f"fails authenticated decryption ({exc.message})"), mac=mac)
        elif sealed:
            return _Checked(None, mac=mac)  # HMAC verified, no plaintext wanted (the keep-or-replace check of `put`)
        actual = hashlib.sha256(plaintext).hexdigest()
        if actual != sha256:
            return _Checked(Problem("corrupt", f"is corrupt: its content hashes to {actual[:12]}, not {sha256[:12]}"), mac=mac)
        if recorded is None:
            why = "written by an older mlbox, or replaced together with its catalog row"
            return _Checked(Problem("unsigned", f"has no HMAC record ({why})"), mac=mac)
        if not sealed and not hmac.compare_digest(recorded, mac):
            why = "replaced together with its sha256, or signed with another key"
            return _Checked(Problem("forged", f"fails its HMAC check ({why})"), mac=mac)
        return _Checked(None, plaintext, mac)

    def problem(self, sha256: str) -> Problem | None:
        """What is wrong with a stored artifact (missing, sha256 or HMAC mismatch, no HMAC); None when it verifies."""
        return self._check(sha256).problem

    def _refuse(self, sha256: str, what: str, problem: Problem) -> NotFound | IntegrityError:
        label = f"{what} (artifact {sha256[:12]})" if what else f"artifact {sha256[:12]}"
        if problem.kind == "missing":
            return NotFound(f"{label} {problem.text}")
        hint = "`mlbox doctor` lists every artifact that fails; restore the box from a backup"
        if problem.kind == "unsigned":
            hint = "if you trust this file, `mlbox doctor --repair` records its HMAC once its sha256 verifies"
        return IntegrityError(f"refusing to load {label}: it {problem.text}", hint=hint)

    def read_verified(self, sha256: str, what: str = "") -> bytes:
        """An artifact's content (decrypted in memory in an encrypted box) after its HMAC and sha256 verify.

        The stored bytes are read once, so what was verified is what is returned.

        Args:
            sha256: the hash the catalog row names.
            what: e.g. "model churn:3 file model.onnx", so the error says which artifact of what.
        """
        checked = self._check(sha256)
        if checked.problem is not None:
            raise self._refuse(sha256, what, checked.problem)
        assert checked.plaintext is not None
        return checked.plaintext

    def open_verified(self, sha256: str, what: str = "") -> Path:
        """The stored file's path after checking its sha256 and HMAC; `what` names it in the refusal.

        In an encrypted box the file holds ciphertext: load through `read_verified` (or
        `flavors.onnx.session`, which decrypts a path in memory), never by opening the path.
        """
        problem = self._check(sha256).problem
        if problem is not None:
            raise self._refuse(sha256, what, problem)
        return self.path(sha256)

    def sign_unsigned(self, referenced: set[str]) -> list[str]:
        """Record an HMAC for each referenced artifact that has none, only after its sha256 verifies; the hashes signed."""
        signed = []
        for sha256 in sorted(referenced):
            path = self.path(sha256)
            if self.recorded_mac(sha256) is not None or not path.is_file():
                continue
            with self._publishing():  # what is signed is exactly the bytes whose sha256 was just verified
                checked = self._check(sha256, locked=True)
                if checked.problem is not None and checked.problem.kind == "unsigned":
                    self._write_mac(sha256, checked.mac)
                    signed.append(sha256)
        return signed

    def unencrypted(self) -> list[str]:
        """Stored files kept as plaintext although the box is encrypted (none in a plain box)."""
        if not self.encrypted:
            return []
        return [f.sha256 for f in self.stored() if not crypt.is_encrypted(self.path(f.sha256))]

    def reseal(self, referenced: set[str], *, retiring: set[str] | None = None) -> list[str]:
        """Rewrite verified artifacts in their encrypted form under the keyring's current key; the hashes rewritten.

        For `mlbox keys encrypt-box` (plaintext files get encrypted) and `mlbox keys rotate`
        (files under a key id in `retiring` are re-encrypted; None: every file not under the
        current key). A file that does not verify is left as it is for `mlbox doctor` to report.
        """
        keyring = self.keyring
        if keyring is None:
            raise StoreError(f"{self.root.parent} is not an encrypted box (or its keys are not loaded)")
        done = []
        for sha256 in sorted(referenced):
            if not self.path(sha256).is_file():
                continue
            key_id = crypt.sealed_key_id(self.path(sha256))
            if key_id is not None and (key_id == keyring.current or (retiring is not None and key_id not in retiring)):
                continue
            checked = self._check(sha256)
            if checked.problem is None and checked.plaintext is not None:
                self._publish(sha256, checked.plaintext, keep_existing=False)
                done.append(sha256)
        return done

    def copy_to(self, sha256: str, dest: Path, what: str = "") -> Path:
        """Write a verified artifact's content (decrypted: an export) to `dest`, a path outside the box or in another box."""
        data = self.read_verified(sha256, what)
        dest.parent.mkdir(parents=True, exist_ok=True)
        crypt.write_bytes(dest, data)  # sealed again only when `dest` lies in an encrypted box
        return dest
