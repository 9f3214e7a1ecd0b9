"""Project data files inside the box that hold a subject's rows: view sources, training labels, training-set files.

A view's declared `source` (features.yaml), a model's training labels (its lineage's `data_source`,
relative to its spec's folder) and training sets written to a file (`features.training_set` audit
entries with `out`) are the controller's own files; when they lie inside the box, erasure rewrites
them without the subject's rows too, or the next `mlbox features ingest` would bring the subject
back. So are the labels files `labels ingest` read (their absolute path is in
`label_batches.source`): their rows of the subject's requests (`request_id`) go too. Files outside
the box are not touched (they are the controller's exports). CSV/TSV files are rewritten row by row
with the `csv` module (other rows keep their text), Parquet files with pyarrow; each through a
temporary file, fsync and an atomic rename. A file keeps its form: one the box encrypted (a sealed
CSV, an encrypted Parquet file) is read and rewritten through mlbox.store.crypt, a plain one stays
plain. A gzip-compressed or unreadable file is reported, never half-rewritten.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox.store import crypt

if TYPE_CHECKING:
    from mlbox.box import Box


@dataclass(frozen=True)
class SourceHit:
    """A data file in the box with the subject's rows (`error`: it could not be read or rewritten)."""

    path: str  # relative to the box
    rows: int
    removed: int
    error: str | None = None


def candidates(box: Box) -> list[Path]:
    """View sources, training label files, training-set files and labels files that resolve inside the box, each once."""
    home, found = box.paths.home.resolve(), []
    for v in box.features.catalog.versions():
        if v.view.source:
            found.append(home / v.view.source)
    for mv in box.registry.versions():
        lineage = mv.lineage or {}
        if lineage.get("data_source") and lineage.get("spec_dir"):
            found.append(Path(str(lineage["spec_dir"])) / str(lineage["data_source"]))
    for row in box.db.query("SELECT source FROM label_batches"):
        if Path(row["source"]).is_absolute():  # a relative one meant the cwd of that `labels ingest`: unknown
            found.append(Path(row["source"]))
    for entry in box.audit.entries(limit=1_000_000, action="features.training_set"):
        if entry.details.get("out"):  # a training set written to a file: the audit entry is its record
            found.append(Path(str(entry.details["out"])))
    out: list[Path] = []
    for path in found:
        try:
            real = path.resolve()
            real.relative_to(home)
        except (OSError, ValueError):
            continue
        if real.is_file() and real not in out:
            out.append(real)
    return out


def _matches(cell: Any, value: Any) -> bool:
    """Whether a file's cell holds `value`: integers compare as numbers ("123", 123, 123.0), strings as text."""
    if cell is None or cell == "":
        return False
    if isinstance(value, frozenset):  # request ids
        return str(cell) in value
    if not isinstance(value, int):
        return str(cell) == str(value)
    if isinstance(cell, int) and not isinstance(cell, bool):
        return cell == value
    text = str(cell).strip()
    try:
        return int(text) == value
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return False
        return number.is_integer() and int(number) == value


def _csv(path: Path, values: Mapping[str, Any], write: bool) -> tuple[int, int]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    sealed = crypt.is_encrypted(path)
    with io.StringIO(crypt.read_bytes(path).decode("utf-8"), newline="") as fh:
        rows = list(csv.reader(fh, delimiter=delimiter))
    if not rows:
        return 0, 0
    header = rows[0]
    where = [(header.index(k), v) for k, v in values.items() if k in header]
    if not where:
        return len(rows) - 1, 0
    kept = [r for r in rows[1:] if not any(i < len(r) and _matches(r[i], v) for i, v in where)]
    removed = len(rows) - 1 - len(kept)
    if write and removed:
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        text = io.StringIO(newline="")
        csv.writer(text, delimiter=delimiter, lineterminator="\n").writerows([header, *kept])
        data = text.getvalue().encode("utf-8")
        if sealed:
            crypt.write_bytes(tmp, data)
        else:
            tmp.write_bytes(data)
        _fsync(tmp)
        os.replace(tmp, path)
    return len(rows) - 1, removed


def _parquet(path: Path, values: Mapping[str, Any], write: bool) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    encrypted = crypt.is_encrypted(path)
    table = crypt.read_table(path)
    cols = [(k, v) for k, v in values.items() if k in table.column_names]
    if not cols:
        return table.num_rows, 0
    flags = [False] * table.num_rows
    for k, v in cols:
        for i, cell in enumerate(table.column(k).to_pylist()):
            flags[i] = flags[i] or _matches(cell, v)
    removed = sum(flags)
    if write and removed:
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        (crypt.write_table if encrypted else pq.write_table)(table.filter(pa.array([not f for f in flags])), tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    return table.num_rows, removed


def _fsync(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


def scrub(box: Box, values: Mapping[str, Any], *, dry_run: bool) -> list[SourceHit]:
    """Remove (dry run: count) the subject's rows from every candidate file; one hit per file that has some."""
    home, out = box.paths.home.resolve(), []
    for path in candidates(box):
        rel = str(path.relative_to(home))
        name = path.name.lower()
        try:
            if name.endswith((".csv", ".tsv")):
                rows, removed = _csv(path, values, not dry_run)
            elif name.endswith(".parquet"):
                rows, removed = _parquet(path, values, not dry_run)
            else:
                out.append(SourceHit(path=rel, rows=0, removed=0, error="not rewritten: only CSV, TSV and Parquet files are"))
                continue
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            out.append(SourceHit(path=rel, rows=0, removed=0, error=f"not rewritten: {exc}"))
            continue
        if removed:
            out.append(SourceHit(path=rel, rows=rows, removed=removed))
    return out
