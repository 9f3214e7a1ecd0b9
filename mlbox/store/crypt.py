"""Every box file read or written through one place: plain in a plain box, encrypted at rest in an encrypted one.

Parquet files (feature batches, training snapshots, prediction logs, label batches) use
Apache Arrow's Parquet modular encryption through its key-management tools: each file gets a
random data-encryption key (AES-256-GCM, footer and every column), wrapped by the keyring's
current key; the wrapped key and the id of the key that wrapped it are stored inside the file,
so one reader decrypts files written under any key of the keyring. DuckDB 2.0 can neither
write encrypted Parquet without its httpfs extension nor read Arrow's multi-page encrypted
column chunks reliably (tag mismatches, measured), so in an encrypted box DuckDB never opens a
batch file: it scans a pyarrow dataset that decrypts, registered on the connection
(`source`), with projection and filter pushdown. Other files (model artifacts) are sealed
whole with AES-256-GCM under an envelope naming the key (`write_bytes`/`read_bytes`).

Which it is depends on the path: the registry in `mlbox.store.keyring` knows the encrypted
boxes this process opened. A path outside every registered box is a user's own file and is
read and written exactly as before.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox.store.keyring import (
    KeyProblem,
    Keyring,
    create_keyring,
    encrypted_box,
    keyring_for,
    open_box,
)

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

__all__ = [
    "KeyProblem",
    "Keyring",
    "Written",
    "box_encrypted",
    "copy",
    "create_keyring",
    "dataset",
    "is_encrypted",
    "keyring_for",
    "open_box",
    "parquet_file",
    "parquet_writer",
    "read_bytes",
    "read_schema",
    "read_table",
    "source",
    "write_bytes",
    "write_table",
]

ENVELOPE = b"MLBXENC1"
PARQUET_ENCRYPTED = b"PARE"
_NAMES = itertools.count()
_CACHE = timedelta(minutes=10)


def box_encrypted(home: str | os.PathLike[str]) -> bool:
    return encrypted_box(Path(home))


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Written:
    """What a Parquet write produced: its rows and, per column, min/max (as text) and null count."""

    rows: int
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """True for an encrypted Parquet file (magic "PARE") or a sealed blob (the envelope's magic)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(ENVELOPE))
            if head == ENVELOPE:
                return True
            fh.seek(-4, os.SEEK_END)
            return fh.read(4) == PARQUET_ENCRYPTED
    except OSError:
        return False


# Parquet modular encryption -------------------------------------------------------


class _Crypto:
    """Arrow's CryptoFactory bound to one keyring: encryption properties per file, one decryption for all."""

    def __init__(self, keyring: Keyring) -> None:
        import pyarrow.parquet.encryption as pe

        self.keyring = keyring
        ring = keyring

        class _Kms(pe.KmsClient):  # type: ignore[misc]
            """Wraps a file's data key with the keyring key it names (AES-GCM; AAD: that key's id)."""

            def __init__(self, _config: object) -> None:
                super().__init__()

            def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
                import base64

                from mlbox.store.keyring import _aesgcm

                nonce = secrets.token_bytes(12)
                sealed = _aesgcm(ring.key(master_key_identifier)).encrypt(nonce, key_bytes, master_key_identifier.encode())
                return base64.b64encode(nonce + sealed).decode()

            def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
                import base64

                from mlbox.store.keyring import _aesgcm

                blob = base64.b64decode(wrapped_key)
                try:
                    return bytes(_aesgcm(ring.key(master_key_identifier)).decrypt(blob[:12], blob[12:], master_key_identifier.encode()))
                except KeyProblem:
                    raise
                except Exception:
                    raise KeyProblem(f"a file's key does not open with keyring key {master_key_identifier!r} (wrong key)") from None

        self._pe = pe
        self._factory = pe.CryptoFactory(lambda config: _Kms(config))
        self._kms = pe.KmsConnectionConfig()
        self.decryption = self._factory.file_decryption_properties(self._kms, pe.DecryptionConfiguration(cache_lifetime=_CACHE))

    def encryption(self) -> Any:
        """Properties for one new file: a fresh data key, wrapped by the current keyring key."""
        self.keyring.refresh()
        config = self._pe.EncryptionConfiguration(
            footer_key=self.keyring.current, uniform_encryption=True, double_wrapping=False,
            internal_key_material=True, cache_lifetime=_CACHE,
        )  # fmt: skip
        return self._factory.file_encryption_properties(self._kms, config)


_CRYPTO: dict[int, _Crypto] = {}


def _crypto(path: str | os.PathLike[str]) -> _Crypto | None:
    keyring = keyring_for(path)
    if keyring is None:
        return None
    found = _CRYPTO.get(id(keyring))
    if found is None or found.keyring is not keyring:
        found = _CRYPTO[id(keyring)] = _Crypto(keyring)
    return found


def _refuse_unkeyed(path: str | os.PathLike[str]) -> None:
    if is_encrypted(path):
        raise KeyProblem(
            f"{path} is encrypted and no key for it is loaded in this process",
            hint="read it through mlbox with its box (its keys/ folder, or encryption.master_key)",
        )


def _wrap(exc: OSError, path: str | os.PathLike[str]) -> Exception:
    text = str(exc)
    if "decrypt" in text.lower() or "encrypted" in text.lower():
        return KeyProblem(f"{path} cannot be decrypted with this box's keys: {text.splitlines()[0]}")
    return exc


def write_table(table: pa.Table, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """`pq.write_table`, encrypted when `path` is in an encrypted box."""
    import pyarrow.parquet as pq

    crypto = _crypto(path)
    if crypto is not None:
        kwargs["encryption_properties"] = crypto.encryption()
    pq.write_table(table, str(path), **kwargs)


def parquet_writer(path: str | os.PathLike[str], schema: pa.Schema, **kwargs: Any) -> pq.ParquetWriter:
    """`pq.ParquetWriter`, encrypted when `path` is in an encrypted box."""
    import pyarrow.parquet as pq

    crypto = _crypto(path)
    if crypto is not None:
        kwargs["encryption_properties"] = crypto.encryption()
    return pq.ParquetWriter(str(path), schema, **kwargs)


def read_table(path: str | os.PathLike[str], **kwargs: Any) -> pa.Table:
    """`pq.read_table` that decrypts."""
    import pyarrow.parquet as pq

    crypto = _crypto(path)
    if crypto is None:
        _refuse_unkeyed(path)
        return pq.read_table(str(path), **kwargs)
    try:
        return pq.read_table(str(path), decryption_properties=crypto.decryption, **kwargs)
    except OSError as exc:
        raise _wrap(exc, path) from None


def parquet_file(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """`pq.ParquetFile` that decrypts (metadata, row groups, iter_batches)."""
    import pyarrow.parquet as pq

    crypto = _crypto(path)
    if crypto is None:
        _refuse_unkeyed(path)
        return pq.ParquetFile(str(path))
    try:
        return pq.ParquetFile(str(path), decryption_properties=crypto.decryption)
    except OSError as exc:
        raise _wrap(exc, path) from None


def read_schema(path: str | os.PathLike[str]) -> pa.Schema:
    return parquet_file(path).schema_arrow


def dataset(paths: Sequence[str | os.PathLike[str]], **kwargs: Any) -> pads.Dataset:
    """A pyarrow dataset over Parquet files that decrypts the encrypted ones."""
    import pyarrow.dataset as pads

    files = [str(p) for p in paths]
    crypto = _crypto(files[0]) if files else None
    if crypto is None:
        for f in files:
            _refuse_unkeyed(f)
        return pads.dataset(files, format="parquet", **kwargs)
    options = pads.ParquetFragmentScanOptions(decryption_properties=crypto.decryption)
    return pads.dataset(files, format=pads.ParquetFileFormat(default_fragment_scan_options=options), **kwargs)


def source(con: duckdb.DuckDBPyConnection, paths: Iterable[str | os.PathLike[str]], *, union_by_name: bool = False) -> str:
    """SQL for a FROM clause over Parquet files: `read_parquet([...])`, or a decrypting Arrow dataset on `con`."""
    files = [str(p) for p in paths]
    crypto = _crypto(files[0]) if files else None
    if crypto is None:
        option = ", union_by_name = true" if union_by_name else ""
        return f"read_parquet([{', '.join(lit(f) for f in files)}]{option})"
    import pyarrow as pa

    kwargs: dict[str, Any] = {}
    if union_by_name and len(files) > 1:
        kwargs["schema"] = pa.unify_schemas([read_schema(f) for f in files], promote_options="permissive")
    name = f"__mlbox_crypt_{next(_NAMES)}"
    con.register(name, dataset(files, **kwargs))
    return name


def copy(
    con: duckdb.DuckDBPyConnection,
    query: str,
    path: str | os.PathLike[str],
    *,
    compression: str = "snappy",
    row_group_size: int | None = None,
) -> Written:
    """`COPY (query) TO path (FORMAT parquet, ...)`: DuckDB writes a plain box's file, Arrow an encrypted one's."""
    crypto = _crypto(path)
    if crypto is None:
        options = f"FORMAT parquet, COMPRESSION {compression}" + (f", ROW_GROUP_SIZE {int(row_group_size)}" if row_group_size else "")
        row = con.execute(f"COPY ({query}) TO {lit(str(path))} ({options}, RETURN_STATS)").fetchone()
        if row is None:
            return Written(rows=0)
        return Written(rows=int(row[1]), columns={k.strip('"'): dict(v) for k, v in (row[4] or {}).items()})
    import pyarrow as pa

    group = row_group_size or 122_880  # DuckDB's own COPY row group size: the same groups as a plain box's file
    reader = con.sql(query).to_arrow_reader(batch_size=group)
    rows = 0
    pending: list[pa.RecordBatch] = []
    buffered = 0
    with parquet_writer(path, reader.schema, compression=compression) as writer:
        for batch in reader:
            pending.append(batch)
            buffered += batch.num_rows
            if buffered >= group:  # DuckDB's batches need not be full: regroup so every row group but the last is
                table = pa.Table.from_batches(pending, reader.schema)
                full = (buffered // group) * group
                writer.write_table(table.slice(0, full), row_group_size=group)
                rest = table.slice(full)
                pending, buffered = rest.to_batches(), rest.num_rows
            rows += batch.num_rows
        if buffered:
            writer.write_table(pa.Table.from_batches(pending, reader.schema), row_group_size=group)
    return Written(rows=rows, columns=_column_stats(path) if rows else {})


def _column_stats(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """min/max/null_count per column over the file's row groups, as RETURN_STATS gives them (values as text)."""
    meta = parquet_file(path).metadata
    out: dict[str, dict[str, Any]] = {}
    schema = meta.schema.to_arrow_schema()
    for c, name in enumerate(schema.names):
        lo = hi = None
        nulls, complete = 0, True
        for g in range(meta.num_row_groups):
            s = meta.row_group(g).column(c).statistics
            if s is None:
                complete = False
                continue
            nulls += s.null_count or 0
            if s.has_min_max:
                lo = s.min if lo is None or s.min < lo else lo
                hi = s.max if hi is None or s.max > hi else hi
        entry: dict[str, Any] = {"null_count": str(nulls)} if complete else {}
        if lo is not None:
            entry.update(min=_text(lo), max=_text(hi))
        out[name] = entry
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# Sealed blobs ---------------------------------------------------------------------


def seal(keyring: Keyring, data: bytes) -> bytes:
    """The envelope: magic, key id length + id, 12-byte nonce, AES-256-GCM ciphertext (AAD: magic + key id)."""
    from mlbox.store.keyring import _aesgcm

    key_id, key = keyring.current_key()
    kid = key_id.encode()
    head = ENVELOPE + bytes([len(kid)]) + kid
    nonce = secrets.token_bytes(12)
    return head + nonce + _aesgcm(key).encrypt(nonce, data, head)


def unseal(keyring: Keyring, blob: bytes, where: str = "") -> bytes:
    from mlbox.store.keyring import _aesgcm

    if not blob.startswith(ENVELOPE):
        return blob
    n = blob[len(ENVELOPE)]
    head_end = len(ENVELOPE) + 1 + n
    key_id = blob[len(ENVELOPE) + 1 : head_end].decode()
    nonce = blob[head_end : head_end + 12]
    try:
        return bytes(_aesgcm(keyring.key(key_id)).decrypt(nonce, blob[head_end + 12 :], blob[:head_end]))
    except KeyProblem:
        raise
    except Exception:
        raise KeyProblem(f"{where or 'a sealed file'} does not decrypt with key {key_id!r}: wrong key or changed bytes") from None


def sealed_key_id(path: str | os.PathLike[str]) -> str | None:
    """The key a sealed file was written under (None when it is not sealed)."""
    with open(path, "rb") as fh:
        head = fh.read(len(ENVELOPE) + 256)
    if not head.startswith(ENVELOPE):
        return None
    n = head[len(ENVELOPE)]
    return head[len(ENVELOPE) + 1 : len(ENVELOPE) + 1 + n].decode()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file, sealed when `path` is in an encrypted box (the caller makes it atomic)."""
    keyring = keyring_for(path)
    Path(path).write_bytes(data if keyring is None else seal(keyring, data))


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's plaintext: sealed files are opened with their box's key."""
    blob = Path(path).read_bytes()
    if not blob.startswith(ENVELOPE):
        return blob
    keyring = keyring_for(path)
    if keyring is None:
        _refuse_unkeyed(path)
    assert keyring is not None
    return unseal(keyring, blob, str(path))


def sqlcipher_key(key: bytes) -> str:
    return f"\"x'{key.hex()}'\""
