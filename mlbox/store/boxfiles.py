"""The files of a box that encryption covers, the key each is encrypted under, and rewriting one under the current key.

`box_files` lists the stores' files (what `mlbox keys encrypt-box` encrypts); `encrypted_files`
finds every encrypted file anywhere in the box (what `mlbox keys rotate` re-encrypts). A file's
key id is read without decrypting it: an encrypted Parquet file names it in its footer's key
material, a sealed file in its envelope. Every rewrite goes to `.tmp-<pid>-rekey-<name>` in the
file's own folder, is fsynced and renamed over the file, so a reader that opened the old file
keeps reading it and a kill leaves one whole file (and a temporary the next run removes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlbox.errors import Conflict, StoreError
from mlbox.store import crypt
from mlbox.store.durable import fsync_path
from mlbox.store.artifacts import ArtifactStore, pid_alive
from mlbox.store.keyring import STORES
from mlbox.store.layout import BoxPaths

REKEY_PREFIX = ".tmp-"  # the offline store, the prediction log and the artifact store sweep `.tmp-<pid>-` of dead pids
_REKEY_TMP = re.compile(r"\.tmp-(\d+)-rekey-")
_KEY_ID = re.compile(rb'"masterKeyID":"([^"]{1,200})"')
LOCK_NAME = ".keys.lock"


@dataclass(frozen=True)
class BoxFile:
    """One file encryption covers: `parquet` (a Parquet file), `artifact` (a content-addressed artifact), `sealed` (any other file)."""

    kind: str
    path: Path


def box_files(paths: BoxPaths) -> Iterator[BoxFile]:
    """The stores' files, which `encrypt_box` encrypts: Parquet batches (features, prediction logs, label batches),
    artifacts, and what jobs and the stores' scratch space hold (`jobs/<id>/`, `tmp/`); no temporaries."""
    for root in (paths.features, paths.predictions):
        if root.is_dir():
            for path in sorted(root.rglob("*.parquet")):
                if not path.name.startswith(REKEY_PREFIX) and path.is_file() and not path.is_symlink():
                    yield BoxFile("parquet", path)
    store = ArtifactStore(paths.artifacts, sweep=False)
    for stored in sorted(store.stored(), key=lambda s: s.sha256):
        yield BoxFile("artifact", store.path(stored.sha256))
    for root in (paths.home / "jobs", paths.home / "tmp"):
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.name.startswith(REKEY_PREFIX) or not path.is_file() or path.is_symlink():
                continue
            yield BoxFile("parquet" if _is_parquet(path) else "sealed", path)


def _is_parquet(path: Path) -> bool:
    """A Parquet file, plain ("PAR1") or encrypted ("PARE"), by its trailing magic."""
    with path.open("rb") as fh:
        if fh.seek(0, os.SEEK_END) < 8:
            return False
        fh.seek(-4, os.SEEK_END)
        return fh.read(4) in (b"PAR1", crypt.PARQUET_ENCRYPTED)


def encrypted_files(paths: BoxPaths) -> Iterator[BoxFile]:
    """Every encrypted file of the box's stores (`keyring.STORES`: the stores' files, and whatever jobs and
    the scratch space hold), which a rotation re-encrypts; found by their magic bytes, temporaries left out.
    Outside the stores nothing is encrypted (the user's files); the databases are rekeyed instead."""
    store = ArtifactStore(paths.artifacts, sweep=False)
    artifacts = {store.path(f.sha256) for f in store.stored()}
    for top in sorted(STORES):
        root = paths.home / top
        if not root.is_dir() or root.is_symlink():
            continue
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(REKEY_PREFIX))
            for name in sorted(names):
                path = Path(folder, name)
                if name.startswith(REKEY_PREFIX) or path.is_symlink() or not crypt.is_encrypted(path):
                    continue
                if path in artifacts:
                    yield BoxFile("artifact", path)
                else:
                    yield BoxFile("sealed" if crypt.sealed_key_id(path) is not None else "parquet", path)


def parquet_key_id(path: Path) -> str | None:
    """The keyring key that wrapped an encrypted Parquet file's data key (None for a plain file).

    An encrypted-footer file ends with FileCryptoMetaData (plain Thrift holding the footer's key
    material, JSON with `masterKeyID`), the encrypted footer, the footer length and "PARE".
    """
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < 12:
            return None
        fh.seek(size - 8)
        tail = fh.read(8)
        if tail[4:] != crypt.PARQUET_ENCRYPTED:
            return None
        footer = int.from_bytes(tail[:4], "little")
        start = max(0, size - 8 - footer)
        fh.seek(start)
        found = _KEY_ID.search(fh.read(min(footer, 1 << 16)))
    if found is None:
        raise StoreError(f"{path} is encrypted but names no key in its footer", hint="`mlbox doctor` checks the box's files")
    return found.group(1).decode()


def file_key_id(item: BoxFile) -> str | None:
    """The key id a box file is encrypted under; None for a plaintext file."""
    if item.kind == "parquet":
        return parquet_key_id(item.path)
    return crypt.sealed_key_id(item.path)


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` a new version of `path` in its folder, keep its mode, fsync, rename over it, fsync the folder.

    An erasure or purge unlinks the file it replaced after its commit, without any lock this
    could take; so the original stays open here, and a file unlinked meanwhile (its link count
    is 0) is not brought back: the copy is dropped. What remains is the instant between that
    check and the rename; a file resurrected there is named by no catalog row, and the store's
    orphan sweep at its next open removes it.
    """
    tmp = path.with_name(f"{REKEY_PREFIX}{os.getpid()}-rekey-{path.name}")
    fd = os.open(path, os.O_RDONLY)
    try:
        write(tmp)
        os.chmod(tmp, os.fstat(fd).st_mode & 0o777)
        _fsync(tmp)
        if os.fstat(fd).st_nlink == 0:
            return
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)


def sweep_rekey_leftovers(paths: BoxPaths) -> list[Path]:
    """Remove the temporary copies of a rotation or conversion that was killed (their pid is gone)."""
    removed = []
    for folder, dirs, names in os.walk(paths.home):
        dirs[:] = [d for d in dirs if Path(folder, d) not in (paths.keys, paths.bentoml)]
        for name in names:
            match = _REKEY_TMP.match(name)
            if match and not pid_alive(int(match.group(1))):
                Path(folder, name).unlink(missing_ok=True)
                removed.append(Path(folder, name))
    return removed


@contextlib.contextmanager
def exclusive(paths: BoxPaths, what: str) -> Iterator[None]:
    """One key operation (rotate, encrypt-box) at a time per box: an flock on keys/.keys.lock, refused when held."""
    paths.keys.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(paths.keys / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"another key operation is running on {paths.home}", hint=f"wait for it, then run {what} again") from None
        yield
    finally:
        os.close(fd)  # closing releases the flock (a killed holder releases it too)


def rewrite_parquet(path: Path) -> None:
    """Rewrite one Parquet file as the box writes new ones (encrypted under the current key), atomically in place.

    Row groups, the schema (with its metadata) and the compression codec stay as they were;
    the copy is written under a temporary name in the same folder, fsynced and renamed over
    the file, so readers that opened the old file keep reading it and a crash leaves one whole file.
    """
    import pyarrow.parquet as pq

    source = crypt.parquet_file(path) if crypt.is_encrypted(path) else pq.ParquetFile(str(path))
    meta = source.metadata
    codec = meta.row_group(0).column(0).compression.lower() if meta.num_row_groups and meta.num_columns else "snappy"

    def write(tmp: Path) -> None:
        with crypt.parquet_writer(tmp, source.schema_arrow, compression=codec) as writer:
            for group in range(meta.num_row_groups):
                writer.write_table(source.read_row_group(group))

    _replace_atomically(path, write)


def reseal_blob(path: Path) -> None:
    """Rewrite a sealed (or, converting, a plain) non-artifact file under the current key, atomically in place."""
    data = crypt.read_bytes(path)
    _replace_atomically(path, lambda tmp: crypt.write_bytes(tmp, data))


_fsync = fsync_path


def rewrite(paths: BoxPaths, item: BoxFile) -> bool:
    """Re-encrypt one file under the current key; False when an artifact does not verify (left for `mlbox doctor`)."""
    if item.kind == "parquet":
        rewrite_parquet(item.path)
        return True
    if item.kind == "sealed":
        reseal_blob(item.path)
        return True
    store = ArtifactStore(paths.artifacts, sweep=False)
    return bool(store.reseal({item.path.name}))
