"""Ingest limits: how many rows, bytes and Parquet row groups one source may hold, checked before its data is read.

A hostile source is small on disk and huge once read: a Parquet file whose footer promises
billions of run-length-encoded rows, a `.csv.gz` that inflates a thousandfold, a footer of a
million row groups. Each is refused from what can be learnt cheaply — the file's size, the
Parquet footer (without touching a data page), the gzip stream inflated chunk by chunk and
thrown away — so nothing is written and memory stays bounded. Rows of a CSV (and of a
transformation's output) are counted by DuckDB in the validation pass, before any write.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbox.config import SETTINGS_BY_NAME, Settings
from mlbox.errors import ValidationError
from mlbox.store import crypt
from mlbox.types import printable

# A footer is parsed into objects several times its size: past this it is a bomb, not a schema.
MAX_FOOTER_BYTES = 64 * 1024 * 1024
CHUNK = 1024 * 1024  # gzip is inflated this much at a time, so the check itself holds ~1 MiB
# Bytes per value once in memory, by Parquet physical type (DuckDB holds a string in a 16-byte slot
# plus its text; the text is counted through the footer's uncompressed size).
WIDTHS = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12, "BYTE_ARRAY": 16}


def _default(name: str) -> int:
    return int(SETTINGS_BY_NAME[name].default)


@dataclass(frozen=True)
class IngestLimits:
    """The most one ingested source may hold (`features.max_ingest_rows`, `_bytes`, `features.max_row_groups`)."""

    rows: int = _default("features.max_ingest_rows")
    bytes: int = _default("features.max_ingest_bytes")
    row_groups: int = _default("features.max_row_groups")

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestLimits:
        return cls(
            rows=int(settings["features.max_ingest_rows"]),
            bytes=int(settings["features.max_ingest_bytes"]),
            row_groups=int(settings["features.max_row_groups"]),
        )

    def check_rows(self, label: str, rows: int, what: str = "rows") -> None:
        if rows > self.rows:
            raise _refused(label, f"{rows:,} {what}", self.rows, "features.max_ingest_rows", "rows")

    def check_bytes(self, label: str, size: int, what: str) -> None:
        if size > self.bytes:
            raise _refused(label, f"{what} {size:,} bytes", self.bytes, "features.max_ingest_bytes", "bytes")


def _refused(label: str, found: str, limit: int, setting: str, unit: str) -> ValidationError:
    env = SETTINGS_BY_NAME[setting].env_var
    return ValidationError(
        f"{printable(label)}: {found}, more than {setting} ({limit:,} {unit}); nothing was ingested",
        hint=f"split the source, or raise {setting} in mlbox.toml (or {env}) if it is genuine",
    )


def check_file(path: Path, limits: IngestLimits) -> None:
    """Refuse a source file over the limits, from its size, its Parquet footer or its inflated gzip stream."""
    label = str(path)
    limits.check_bytes(label, path.stat().st_size, "holds")
    if path.suffix.lower() == ".parquet":
        check_parquet(path, limits)
    elif path.suffix.lower() == ".gz":
        check_gzip(path, limits)


def check_parquet(path: Path, limits: IngestLimits) -> None:
    """Rows, row groups and an in-memory size estimate from the footer alone (no data page is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    label = str(path)
    with path.open("rb") as fh:
        size = fh.seek(0, 2)
        if size < 12:
            return  # not Parquet at all: the reader says so
        fh.seek(size - 8)
        tail = fh.read(8)
    if tail[4:] not in (b"PAR1", b"PARE"):
        return
    encrypted = tail[4:] == b"PARE"  # a file of an encrypted box: its footer opens with the box's key
    if encrypted and crypt.keyring_for(path) is None:
        return  # no key for it here: the reader refuses it with one error line
    footer = int.from_bytes(tail[:4], "little")
    if footer > MAX_FOOTER_BYTES:
        raise ValidationError(
            f"{printable(label)}: its Parquet footer is {footer:,} bytes (at most {MAX_FOOTER_BYTES:,} are read)",
            hint="rewrite the file with fewer row groups and columns",
        )
    try:
        meta = (crypt.parquet_file(path) if encrypted else pq.ParquetFile(path)).metadata
    except (pa.ArrowException, OSError):
        return  # a corrupt footer: DuckDB's reader gives the one error line
    if meta.num_row_groups > limits.row_groups:
        raise _refused(label, f"{meta.num_row_groups:,} row groups", limits.row_groups, "features.max_row_groups", "row groups")
    limits.check_rows(label, int(meta.num_rows))
    encoded = sum(int(meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups))
    width = sum(_width(meta.schema.column(i)) for i in range(meta.num_columns))
    # RLE and dictionaries make `encoded` tiny for a column of one repeated value: rows x width is not
    limits.check_bytes(label, max(encoded, int(meta.num_rows) * width), "would take about")


def _width(column: Any) -> int:
    if column.physical_type == "FIXED_LEN_BYTE_ARRAY":
        return int(column.length or 16)
    return WIDTHS.get(str(column.physical_type), 8)


def check_gzip(path: Path, limits: IngestLimits) -> None:
    """Inflate the stream chunk by chunk, counting; stop at the first byte past the limit."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:  # every member of a multi-member file, as DuckDB reads them
            while chunk := fh.read(CHUNK):
                total += len(chunk)
                if total > limits.bytes:
                    limits.check_bytes(str(path), total, "inflates to at least")
    except (OSError, EOFError, zlib.error) as exc:
        raise ValidationError(f"cannot read {printable(path)}: not a valid gzip file ({exc})") from None
