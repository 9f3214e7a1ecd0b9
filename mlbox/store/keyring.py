"""An encrypted box's keys: the master key, the keyring of data keys it wraps, and the process-wide registry by home.

A box is encrypted when `keys/keyring.json` exists. The keyring holds 256-bit data keys, each
wrapped with AES-GCM by the master key (AAD: the key's id), and names the current one: new
files are encrypted under it, and every encrypted file names the key it was written under, so
files under an old and a new key mix during `mlbox keys rotate`. The master key is
`keys/master.key` (base64, mode 0600) or comes by reference through the setting
`encryption.master_key` (`{"$env": ...}`, `{"$file": ...}`), so a copy of the box without it is
unreadable. Key material is never logged or put in an error message.

`open_box` registers a box's keyring under its home; `keyring_for(path)` finds the keyring of
the box holding a path. Every store reads and writes its files through `mlbox.store.crypt`,
which asks the registry, so call sites take paths as before and a plain box behaves as before.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

from typing import TYPE_CHECKING

from mlbox.errors import StoreError
from mlbox.store.durable import fsync_path

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEYRING = "keyring.json"
MASTER = "master.key"
KEY_BYTES = 32
_AAD = b"mlbox-keyring/1:"


class KeyProblem(StoreError):
    """A key is missing, wrong, or readable by other OS users."""


def _aesgcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def check_private_key_file(path: Path) -> None:
    """Refuse a key file that other OS users can read or write (it would give them every value in the box)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyProblem(
            f"{path} is readable by other OS users (mode {stat.S_IMODE(mode):04o}); mlbox refuses to use this key",
            hint=f"run `chmod 600 {path}`",
        )


def _decode_master(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyProblem(f"the master key from {where} is not {KEY_BYTES} bytes of base64", hint="give the key `mlbox init --encrypt` wrote")
    return key


def load_master(keys_dir: Path, reference: str = "") -> bytes:
    """The master key: `reference` (the resolved `encryption.master_key` setting) or `keys/master.key`."""
    if reference:
        return _decode_master(reference, "setting encryption.master_key")
    path = keys_dir / MASTER
    if not path.is_file():
        raise KeyProblem(
            f"this box is encrypted and its master key is missing ({path} does not exist)",
            hint="restore keys/master.key or set encryption.master_key (e.g. {\"$env\": \"MLBOX_MASTER_KEY\"})",
        )
    check_private_key_file(path)
    return _decode_master(path.read_text(), str(path))


def _write_private(path: Path, text: str) -> None:
    """Write `path` atomically with mode 0600 (temp file in the same folder, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


class Keyring:
    """The data keys of one encrypted box, unwrapped in memory; reloaded from disk when a file names an unknown key."""

    def __init__(self, home: Path, master: bytes) -> None:
        self.home = home
        self.path = home / "keys" / KEYRING
        self._master = master
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}
        self.current = ""
        self._seen: tuple[int, int] | None = None
        self.reload()

    def __repr__(self) -> str:  # never the key material
        return f"Keyring({str(self.home)!r}, current={self.current!r}, keys={sorted(self._keys)})"

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def reload(self) -> None:
        """Read keys/keyring.json again (another process may have rotated)."""
        check_private_key_file(self.path)
        try:
            st = self.path.stat()
            doc = json.loads(self.path.read_text())
            entries = doc["keys"]
            current = str(doc["current"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyProblem(f"{self.path} cannot be read as a keyring: {type(exc).__name__}") from None
        keys: dict[str, bytes] = {}
        for key_id, entry in entries.items():
            blob = base64.b64decode(entry["wrapped"])
            try:
                keys[key_id] = _aesgcm(self._master).decrypt(blob[:12], blob[12:], _AAD + key_id.encode())
            except Exception:  # cryptography's InvalidTag: the master key is not the one that wrapped this key
                raise KeyProblem(
                    f"the master key does not open {self.path} (wrong key)",
                    hint="give the master key this box was encrypted with (keys/master.key or encryption.master_key)",
                ) from None
        if current not in keys:
            raise KeyProblem(f"{self.path} names current key {current!r}, which it does not hold")
        with self._lock:
            self._keys, self.current, self._seen = keys, current, (st.st_ino, st.st_mtime_ns)

    def refresh(self) -> None:
        """Reload when keys/keyring.json changed on disk (a rotation by another process): one stat."""
        try:
            st = self.path.stat()
        except OSError:
            return
        if (st.st_ino, st.st_mtime_ns) != self._seen:
            self.reload()

    def key(self, key_id: str) -> bytes:
        """Data key `key_id`; an id this process has not seen yet is looked up on disk once."""
        found = self._keys.get(key_id)
        if found is None:
            self.reload()
            found = self._keys.get(key_id)
        if found is None:
            raise KeyProblem(f"a file of the box at {self.home} is encrypted under key {key_id!r}, which the keyring no longer holds")
        return found

    def current_key(self) -> tuple[str, bytes]:
        """The key new files are written under, as it is on disk now: a process idle through a rotation
        must not write a file under a key the rotation has since retired."""
        self.refresh()
        return self.current, self._keys[self.current]

    def _save(self, keys: dict[str, bytes], current: str) -> None:
        doc = {"version": 1, "current": current, "keys": {}}
        for key_id, key in sorted(keys.items()):
            nonce = secrets.token_bytes(12)
            wrapped = nonce + _aesgcm(self._master).encrypt(nonce, key, _AAD + key_id.encode())
            doc["keys"][key_id] = {"wrapped": base64.b64encode(wrapped).decode()}  # type: ignore[index]
        _write_private(self.path, json.dumps(doc, indent=1) + "\n")
        st = self.path.stat()
        with self._lock:
            self._keys, self.current, self._seen = dict(keys), current, (st.st_ino, st.st_mtime_ns)

    def add_key(self) -> str:
        """Make a new data key current (the old ones stay until `retire`); its id."""
        key_id = "k" + datetime.now(UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
        self._save({**self._keys, key_id: secrets.token_bytes(KEY_BYTES)}, key_id)
        return key_id

    def retire(self, key_ids: list[str]) -> None:
        """Forget keys no file uses any more (the current key is never retired)."""
        self._save({k: v for k, v in self._keys.items() if k not in key_ids or k == self.current}, self.current)


# The registry --------------------------------------------------------------------
_BOXES: dict[str, Keyring] = {}
_LOCK = threading.Lock()


def encrypted_box(home: Path) -> bool:
    return (Path(home) / "keys" / KEYRING).is_file()


def register(keyring: Keyring) -> None:
    with _LOCK:
        for root in {os.path.abspath(keyring.home), os.path.realpath(keyring.home)}:
            _BOXES[root] = keyring


def unregister(home: Path) -> None:
    with _LOCK:
        for root in {os.path.abspath(home), os.path.realpath(home)}:
            _BOXES.pop(root, None)


# What mlbox keeps in a box; everything else under the home (the project's source files, a
# training set or export written where the user asked, logs, the Bento store) is the user's
# or an export, and stays readable by their own tools.
STORES = frozenset({"features", "predictions", "artifacts", "meta.db", "online.db", "tmp", "jobs"})


def keyring_for(path: str | os.PathLike[str]) -> Keyring | None:
    """The keyring of the registered encrypted box whose stores hold `path` (`STORES`); None otherwise."""
    if not _BOXES:
        return None
    here = os.path.abspath(path)
    top = ""
    while True:
        found = _BOXES.get(here)
        if found is not None:
            return found if top in STORES else None
        parent = os.path.dirname(here)
        if parent == here:
            return None
        top = os.path.basename(here)
        here = parent


def open_box(home: Path, master_reference: str = "") -> Keyring | None:
    """Load and register an encrypted box's keyring (None for a plain box). Refuses a wrong or missing master key."""
    home = Path(home)
    if not encrypted_box(home):
        return None
    existing = _BOXES.get(os.path.abspath(home))
    if existing is not None:
        return existing
    keyring = Keyring(home, load_master(home / "keys", master_reference))
    register(keyring)
    return keyring


def create_keyring(home: Path, master_reference: str = "") -> Keyring:
    """Make a box encrypted: a master key (unless given by reference) and a keyring with one data key; registered."""
    home = Path(home)
    keys_dir = home / "keys"
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keys_dir / KEYRING
    if path.exists():
        raise KeyProblem(f"{home} is already encrypted ({path} exists)")
    if master_reference:
        master = _decode_master(master_reference, "setting encryption.master_key")
    elif (keys_dir / MASTER).exists():
        master = load_master(keys_dir)
    else:
        master = secrets.token_bytes(KEY_BYTES)
        _write_private(keys_dir / MASTER, base64.b64encode(master).decode() + "\n")
    first = "k" + datetime.now(UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
    keyring = Keyring.__new__(Keyring)
    keyring.home, keyring.path, keyring._master = home, path, master
    keyring._lock, keyring._keys, keyring.current, keyring._seen = threading.Lock(), {}, "", None
    keyring._save({first: secrets.token_bytes(KEY_BYTES)}, first)
    register(keyring)
    return keyring


def new_master_key() -> str:
    """A fresh master key as base64 text, for `encryption.master_key` by reference."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
