"""The offline store: validated ingest into immutable Parquet batches, and reading them back.

DuckDB runs in memory; no DuckDB file is ever held open (ARCHITECTURE.md's locking rule).
An ingest validates the whole source before anything is written, writes the batch under
a temporary name, fsyncs it, then — holding meta.db's write lock — renames it into place
and commits its catalog row in the same transaction. A crash leaves either no batch or
the whole batch; temporary files of dead processes and renamed-but-uncommitted files are
swept on the next open, under the same write lock so no live commit is touched.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from mlbox.errors import UsageError, ValidationError
from mlbox.features.catalog import Batch, Catalog, ViewVersion
from mlbox.features.definitions import DTYPES
from mlbox.features.limits import IngestLimits, check_file
from mlbox.features.pit import q as _q
from mlbox.features.sandbox import check_select as check_select  # re-exported: `features sql` checks with it
from mlbox.features.sandbox import check_transformation, sandbox, sandbox_error
from mlbox.features.sandbox import first_line as _first_line
from mlbox.features.stats import batch_stats
from mlbox.store import crypt
from mlbox.store.artifacts import file_sha256, pid_alive
from mlbox.store.durable import fsync_path
from mlbox.store.audit import AuditLog
from mlbox.types import printable

TMP_PREFIX = ".tmp-"
NAIVE_TYPES = ("TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATE", "TIMESTAMP WITHOUT TIME ZONE")
NANO_TYPES = ("TIMESTAMP_NS", "TIMESTAMPTZ_NS")
TZ_SUFFIX = r"([zZ]|[+-][0-9]{2}(:?[0-9]{2})?)$"
SUB_MICRO_TEXT = r"[0-9]:[0-9]{2}[.,][0-9]{6}[0-9]*[1-9]"  # a seventh or later fractional digit that is not 0
Progress = Callable[[str], None]
# How batches are written (snappy decodes about 20% faster than zstd in the point-in-time join);
# `mlbox bench features` writes its DuckDB COPY floor with exactly these options.
BATCH_COMPRESSION = "snappy"
BATCH_FORMAT = f"FORMAT parquet, COMPRESSION {BATCH_COMPRESSION}"


def connect(threads: int | None = None, temp_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with mlbox's session settings (UTC, explicit threads)."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET threads = {int(threads or os.cpu_count() or 1)}")
    if temp_dir is not None:
        con.execute("SET temp_directory = ?", [str(temp_dir)])
    return con


@dataclass
class IngestResult:
    batch: Batch
    seconds: float
    notes: list[str] = field(default_factory=list)


def _fsync_and_hash(path: Path) -> str:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())
    return file_sha256(path)


fsync_dir = fsync_path  # a rename or new file in a folder is durable once the folder is fsynced


@dataclass(frozen=True)
class CheckedSource:
    """What ingest's checks found in a source: the typed SELECT list, the (entity, timestamp) key and notes."""

    select: str  # typed columns over the checked relation, in the view's order
    key_cols: str  # the quoted join keys and timestamp
    duplicates: int  # (entity, timestamp) pairs that appear more than once (0 unless keep-last)
    notes: list[str]


def check_source(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    version: ViewVersion,
    label: str,
    *,
    naive_timestamps: str,
    duplicate_policy: str,
    transformed: bool = False,
    limits: IngestLimits | None = None,
) -> CheckedSource:
    """Every check a batch passes before it is written (ingest and push alike), with `__typed` left as a temp view.

    Columns and types against the view, key and timestamp nulls, sub-microsecond and naive
    timestamps, and duplicate (entity, timestamp) pairs, refused or counted by `duplicate_policy`.
    """
    view, keys = version.view, version.entity.join_keys
    columns = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {relation})").fetchall())
    expected = {**keys, view.timestamp: "timestamp", **{f.name: f.dtype for f in view.fields}}
    _check_columns(columns, expected, label, transformed)
    limits = limits or IngestLimits()
    if transformed:  # a transformation can multiply rows (a join, range()): stop counting one past the limit
        output = first(con.execute(f"SELECT count(*) FROM (SELECT 1 FROM {relation} LIMIT {limits.rows + 1})"))
        limits.check_rows(f"the transformation's output from {label}", int(output[0]) if output else 0)
    select, naive = _validate(con, relation, columns, keys, view, label, limits)
    naive_csv, fine = _csv_text_checks(con, label, view.timestamp)
    naive += naive_csv
    if fine:
        raise ValidationError(
            f"{label}: {fine} timestamp(s) in {view.timestamp!r} are finer than the store's microseconds",
            hint="the CSV reader would truncate them, so a row could be seen before its time: "
            "round them up to whole microseconds, or use Parquet (rounded up exactly)",
        )
    notes: list[str] = []
    if naive:
        if naive_timestamps == "reject":
            raise ValidationError(
                f"{label}: {naive} timestamp(s) in {view.timestamp!r} have no timezone",
                hint="add an offset such as Z or +04:00, or set features.naive_timestamps = 'utc'",
            )
        notes.append(f"{naive} timestamp(s) without a timezone were read as UTC (features.naive_timestamps)")
    key_cols = ", ".join(_q(k) for k in [*keys, view.timestamp])
    con.execute(f"CREATE OR REPLACE TEMP VIEW __typed AS SELECT {select} FROM {relation}")
    dupes = first(con.execute(
        f"SELECT count(*), sum(n) FROM (SELECT count(*) AS n FROM __typed GROUP BY {key_cols} HAVING n > 1)"
    )) or (0, 0)
    if dupes[0]:
        if duplicate_policy == "reject":
            example = first(con.execute(f"SELECT {key_cols} FROM __typed GROUP BY {key_cols} HAVING count(*) > 1 LIMIT 1"))
            raise ValidationError(
                f"{label}: {dupes[0]} (entity, timestamp) pair(s) appear more than once, e.g. {example}",
                hint="deduplicate the source or set features.duplicate_policy = 'keep-last'",
            )
        notes.append(f"dropped {int(dupes[1]) - int(dupes[0])} duplicate row(s), keeping the last (keep-last)")
    return CheckedSource(select, key_cols, int(dupes[0]), notes)


class OfflineStore:
    """Immutable Parquet batches under `<box>/features/<view>/v<version>/`."""

    def __init__(self, catalog: Catalog, audit: AuditLog, home: Path, temp_dir: Path, limits: IngestLimits | None = None) -> None:
        self.catalog = catalog
        self.limits = limits or IngestLimits()
        self.audit = audit
        self.home = home
        self.root = home / "features"
        self.temp_dir = temp_dir

    def connect(self) -> duckdb.DuckDBPyConnection:
        return connect(temp_dir=self.temp_dir)

    # reading -------------------------------------------------------------
    def files(self, version: ViewVersion, snapshot: int | None = None) -> list[tuple[Batch, Path]]:
        return [(b, self.home / b.path) for b in self.catalog.batches(version.name, version.version, snapshot)]

    # crash recovery ------------------------------------------------------
    def sweep(self) -> list[Path]:
        """Remove temporary files of dead processes and batch files no catalog row names."""
        removed: list[Path] = []
        if not self.root.exists():
            return removed
        with self.catalog.db.atomic():  # the write lock: no rename-and-commit is in flight meanwhile
            known = self.catalog.all_batch_paths()
            for path in self.root.rglob("*.parquet"):
                rel = str(path.relative_to(self.home))
                if path.name.startswith(TMP_PREFIX):
                    match = re.match(rf"{re.escape(TMP_PREFIX)}(\d+)-", path.name)
                    if match and pid_alive(int(match.group(1))):
                        continue
                elif rel in known:
                    continue
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # ingest --------------------------------------------------------------
    def ingest(
        self,
        version: ViewVersion,
        source: Any,
        actor: str,
        *,
        duplicate_policy: str = "reject",
        naive_timestamps: str = "utc",
        base_dir: Path | None = None,
        progress: Progress | None = None,
    ) -> IngestResult:
        """Validate `source` against the view, write one immutable batch and commit it."""
        started = time.perf_counter()
        step = progress or (lambda _label: None)
        view, keys = version.view, version.entity.join_keys
        con = self.connect()
        notes: list[str] = []
        try:
            step("reading source")
            label = register_source(con, source, base_dir or Path.cwd(), sub_micros="ceil", limits=self.limits)
            folder = inside_box(self.root / view.name / f"v{version.version}", self.home)
            name = uuid.uuid4().hex
            tmp = folder / f"{TMP_PREFIX}{os.getpid()}-{name}.parquet"
            # From here on DuckDB reaches only the declared source file and this batch's own
            # temporary file (for COPY and the statistics): the transformation is user SQL. In an
            # encrypted box DuckDB touches neither: the batch goes through Arrow's encrypting writer.
            sandbox(con, [Path(label), tmp] if isinstance(source, (str, os.PathLike)) else [tmp])
            if view.transformation:
                check_transformation(con, view.name, view.transformation)
                try:
                    con.execute(f"CREATE TEMP VIEW __out AS {view.transformation}")
                    con.execute("SELECT * FROM __out LIMIT 0").fetchall()
                except duckdb.PermissionException as exc:
                    raise sandbox_error(view.name, exc) from None
                except duckdb.Error as exc:
                    raise ValidationError(f"transformation of {view.name!r} failed on {label}: {_first_line(exc)}") from None
                relation = "__out"
            else:
                relation = "source"
            step("validating")
            checked = check_source(con, relation, version, label, naive_timestamps=naive_timestamps, limits=self.limits,
                                   duplicate_policy=duplicate_policy, transformed=bool(view.transformation))  # fmt: skip
            notes += checked.notes
            final = "SELECT * FROM __typed"
            if checked.duplicates:
                final = (
                    f"SELECT * EXCLUDE (__ord) FROM (SELECT {checked.select}, row_number() OVER () AS __ord FROM {relation}) "
                    f"QUALIFY row_number() OVER (PARTITION BY {checked.key_cols} ORDER BY __ord DESC) = 1"
                )
            step("writing batch")
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{name}.parquet"
            try:
                written = crypt.copy(con, final, tmp, compression=BATCH_COMPRESSION)
                rows = written.rows
                if rows == 0:
                    raise ValidationError(f"{label} has no rows")
                step("computing statistics")
                # fsync and hashing (both release the GIL) overlap the statistics query in DuckDB
                with ThreadPoolExecutor(1) as pool:
                    digest_job = pool.submit(_fsync_and_hash, tmp)
                    stats = batch_stats(con, str(tmp), view, rows, written.columns)
                    digest = digest_job.result()
                os.chmod(tmp, 0o444)
                step("committing")
                with self.catalog.db.atomic():
                    os.rename(tmp, target)
                    fsync_dir(folder)
                    batch = self.catalog.add_batch(
                        version,
                        path=str(target.relative_to(self.home)),
                        source=label,
                        row_count=rows,
                        min_ts=stats["ts_min"],
                        max_ts=stats["ts_max"],
                        sha256=digest,
                        stats=stats,
                        actor=actor,
                    )
                    self.audit.record(
                        actor, "features.ingest", version.ref, {"batch": batch.id, "rows": batch.row_count, "source": label}
                    )
            except BaseException:
                tmp.unlink(missing_ok=True)
                if target.exists() and str(target.relative_to(self.home)) not in self.catalog.all_batch_paths():
                    target.unlink(missing_ok=True)
                raise
        except duckdb.PermissionException as exc:  # a lazily scanned path of the transformation
            raise sandbox_error(view.name, exc) from None
        finally:
            con.close()
        return IngestResult(batch, time.perf_counter() - started, notes)


def micros_sql(column: str, src_type: str, rounding: str) -> str:
    """A TIMESTAMPTZ expression for `column` at the store's microsecond precision.

    Nanosecond values are rounded explicitly — `rounding="ceil"` for feature rows, so a row
    never becomes earlier than it was (a row at T+900 ns is stored at T+1 us and is not
    visible to a label at T); `"floor"` for labels. DuckDB's own cast would round to the
    nearest microsecond, which can move a row earlier. Text is parsed at nanoseconds where
    it fits (years 1677-2262) and at microseconds otherwise.
    """
    if src_type in NANO_TYPES:
        ns = f"epoch_ns({column})"
    elif src_type == "VARCHAR":
        ns = f"epoch_ns(TRY_CAST({column} AS TIMESTAMPTZ_NS))"
    else:
        return f"CAST({column} AS TIMESTAMPTZ)"
    # DuckDB's integer `//` truncates toward zero: subtract the non-negative remainder first
    micros = f"(({ns}) - (({ns}) % 1000 + 1000) % 1000) // 1000"
    if rounding == "ceil":
        micros += f" + CAST(({ns}) % 1000 <> 0 AS BIGINT)"
    expr = f"CAST(make_timestamp({micros}) AS TIMESTAMPTZ)"
    return f"COALESCE({expr}, TRY_CAST({column} AS TIMESTAMPTZ))" if src_type == "VARCHAR" else expr


def first(cursor: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row of a result, fetching it completely (DuckDB 2 refuses new work on a half-read result)."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _round_pandas(frame: Any, rounding: str) -> Any:
    """Round timezone-aware nanosecond columns of a pandas frame to microseconds (`ceil` or `floor`).

    DuckDB reads them as microsecond TIMESTAMPTZ, truncating toward zero; naive ones it
    reads as TIMESTAMP_NS, which `micros_sql` rounds in SQL.
    """
    import pandas as pd

    out = None
    for name in frame.columns:
        col = frame[name]
        if isinstance(col.dtype, pd.DatetimeTZDtype) and col.dtype.unit == "ns" and (col.array.asi8 % 1000).any():
            out = frame.copy(deep=False) if out is None else out
            out[name] = col.dt.ceil("us") if rounding == "ceil" else col.dt.floor("us")
    return frame if out is None else out


def register_source(con: duckdb.DuckDBPyConnection, source: Any, base_dir: Path, *, sub_micros: str | None = None,
                    text_columns: tuple[str, ...] = (), limits: IngestLimits | None = None) -> str:  # fmt: skip
    """Expose `source` (CSV/Parquet path, pandas DataFrame, Arrow table) as the view `source`; return its label.

    `sub_micros` ("ceil" or "floor") rounds a pandas frame's timezone-aware nanosecond columns.
    `text_columns` of a CSV are read as text as written (the sniffer would make `yes`/`no` booleans).
    A file over `limits` (default: the settings' defaults) is refused before its data is read.
    """
    limits = limits or IngestLimits()
    if isinstance(source, (str, os.PathLike)):
        path = source_path(source, base_dir)
        parquet = path.suffix.lower() == ".parquet"
        # the only compressed inputs: gzip, whose inflated size `check_file` bounds (no .zip, .zst, .bz2)
        if not parquet and path.suffix.lower() not in (".csv", ".tsv") and "".join(path.suffixes[-2:]).lower() not in (".csv.gz", ".tsv.gz"):
            raise UsageError(f"cannot read {printable(path.name)}: use a .csv, .csv.gz, .tsv or .parquet file")
        check_file(path, limits)
        try:
            if parquet and crypt.is_encrypted(path):  # a file of an encrypted box: DuckDB reads it through Arrow
                rel = con.sql(f"SELECT * FROM {crypt.source(con, [str(path)])}")
            elif parquet:
                rel = con.read_parquet(str(path))
            else:
                header = con.read_csv(str(path), header=True).columns if text_columns else []
                types = {c: "VARCHAR" for c in text_columns if c in header}
                rel = con.read_csv(str(path), header=True, dtype=types) if types else con.read_csv(str(path), header=True)
        except duckdb.Error as exc:
            raise ValidationError(f"cannot read {printable(path)}: {printable(_first_line(exc))}") from None
        rel.create_view("source")
        return str(path)
    module = type(source).__module__
    if module.startswith(("pandas", "pyarrow", "polars")):
        if hasattr(source, "__len__"):
            limits.check_rows(f"{type(source).__name__}", len(source))
        if sub_micros and module.startswith("pandas") and hasattr(source, "columns"):
            source = _round_pandas(source, sub_micros)
        con.register("source", source)
        return f"{type(source).__name__} ({len(source)} rows)"
    raise UsageError(f"cannot ingest a {type(source).__name__}: pass a file path, a pandas DataFrame or an Arrow table")


def source_path(source: str | os.PathLike[str], base_dir: Path) -> Path:
    """The regular file a source path names (symlinks followed), or a UsageError: never a raw OSError."""
    text = os.fspath(source)
    if "\0" in str(text):
        raise UsageError(f"invalid source path {str(text)!r}: it contains a NUL byte")
    try:
        path = (base_dir / Path(text).expanduser()).resolve()
        regular = path.is_file()
    except (OSError, RuntimeError) as exc:  # too long, a symlink loop, an unknown ~user
        raise UsageError(f"invalid source path {str(text)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if not regular:
        raise UsageError(f"source file {printable(path)} not found", hint="a source must be a regular file (not a folder, device or pipe)")
    return path


def inside_box(folder: Path, home: Path) -> Path:
    """`folder` if it resolves inside the box, else a ValidationError: a symlink must not send a write elsewhere."""
    try:
        folder.resolve().relative_to(home.resolve())
    except ValueError:
        raise ValidationError(
            f"refusing to write under {printable(folder)}: it resolves to {printable(folder.resolve())}, outside the box",
            hint="a folder inside the box was replaced by a symlink; remove it (mlbox doctor lists the box's files)",
        ) from None
    return folder


def _csv_text_checks(con: duckdb.DuckDBPyConnection, label: str, column: str) -> tuple[int, int]:
    """(naive, sub-microsecond) timestamps in a CSV column that DuckDB's sniffer typed as a timestamp.

    The sniffer reads a column mixing `...Z` and naive values as TIMESTAMPTZ, taking naive
    ones in the session zone (UTC), and truncates digits past the microsecond; only the
    text says which values had no offset or finer digits.
    """
    raw = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE source)").fetchall())
    typed = raw.get(column, "VARCHAR") != "VARCHAR" and raw.get(column) != "DATE"
    if not typed or not label.lower().endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        return 0, 0
    con.read_csv(label, header=True, all_varchar=True).select(_q(column)).create_view("__csv_text")
    c = _q(column)
    naive = f"count(*) FILTER (WHERE {c} IS NOT NULL AND NOT regexp_matches(trim({c}), '{TZ_SUFFIX}'))"
    if raw.get(column) != "TIMESTAMP WITH TIME ZONE":
        naive = "0"  # a naive-typed column is counted from its type
    row = first(con.execute(
        f"SELECT {naive}, count(*) FILTER (WHERE regexp_matches({c}, '{SUB_MICRO_TEXT}')) FROM __csv_text"
    ))
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _check_columns(columns: dict[str, str], expected: dict[str, str], label: str, transformed: bool) -> None:
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        parts.append(f"extra column(s) {', '.join(extra)}")
    where = "the transformation's output" if transformed else label
    raise ValidationError(
        f"{where} does not match the view: {'; '.join(parts)}",
        hint="declare extra columns as fields, or drop them with a transformation" if extra else None,
    )


def _validate(
    con: duckdb.DuckDBPyConnection, relation: str, columns: dict[str, str], keys: Mapping[str, str], view: Any, label: str,
    limits: IngestLimits,
) -> tuple[str, int]:
    """One pass over the data: rows, cast failures, null keys and timestamps, naive timestamps.

    Returns the typed SELECT list and the number of naive timestamps.
    """
    checks: list[str] = []
    select: list[str] = []
    names: list[tuple[str, str]] = []
    for col, dtype in [*keys.items(), *((f.name, f.dtype) for f in view.fields)]:
        target, src = DTYPES[dtype], columns[col]
        c = _q(col)
        if src == target:
            select.append(c)
            continue
        cast = f"TRY_CAST({c} AS {target})"
        bad = f"{c} IS NOT NULL AND {cast} IS NULL"
        if target in ("BIGINT", "INTEGER") and (src in ("DOUBLE", "FLOAT", "VARCHAR") or src.startswith("DECIMAL")):
            as_double = f"TRY_CAST({c} AS DOUBLE)"  # DuckDB rounds 1.5 to 2 when casting to an integer
            bad = f"{bad} OR ({as_double} IS NOT NULL AND {as_double} <> trunc({as_double}))"
        checks.append(f"count(*) FILTER (WHERE {bad})")
        names.append((col, f"a value that is not {dtype}"))
        select.append(f"{cast} AS {c}")
    ts, src = _q(view.timestamp), columns[view.timestamp]
    naive_expr = "0"
    # event timestamps are rounded UP to the store's microseconds: a row is never seen early
    if src == "TIMESTAMP WITH TIME ZONE":
        select.insert(len(keys), ts)
    elif src == "TIMESTAMPTZ_NS":
        select.insert(len(keys), f"{micros_sql(ts, src, 'ceil')} AS {ts}")
    elif src in NAIVE_TYPES:
        select.insert(len(keys), f"{micros_sql(ts, src, 'ceil')} AS {ts}")
        naive_expr = f"count({ts})"
    elif src == "VARCHAR":
        select.insert(len(keys), f"{micros_sql(ts, src, 'ceil')} AS {ts}")
        checks.append(f"count(*) FILTER (WHERE {ts} IS NOT NULL AND TRY_CAST({ts} AS TIMESTAMPTZ) IS NULL)")
        names.append((view.timestamp, "a value that is not a timestamp"))
        naive_expr = f"count(*) FILTER (WHERE {ts} IS NOT NULL AND NOT regexp_matches(trim({ts}), '{TZ_SUFFIX}'))"
    else:
        raise ValidationError(f"{label}: timestamp column {view.timestamp!r} is {src}, not a timestamp")
    for col in [*keys, view.timestamp]:
        checks.append(f"count(*) FILTER (WHERE {_q(col)} IS NULL)")
        names.append((col, "a null (entity keys and timestamps are required)"))
    row = first(con.execute(f"SELECT {', '.join([*checks, naive_expr, 'count(*)'])} FROM {relation}")) or ()
    limits.check_rows(label, int(row[-1]))  # a CSV's rows are known only now, still before anything is written
    row = row[:-1]
    for (col, problem), count in zip(names, row[:-1], strict=True):
        if count:
            raise ValidationError(
                f"{label}: column {col!r} has {count} row(s) with {problem}",
                hint=_example(con, relation, col, columns, keys, view) if "null" not in problem else None,
            )
    return ", ".join(select), int(row[-1])


def _example(
    con: duckdb.DuckDBPyConnection, relation: str, col: str, columns: dict[str, str], keys: Mapping[str, str], view: Any
) -> str:
    dtype = keys.get(col) or (view.get_field(col).dtype if col != view.timestamp else "timestamp")
    target = DTYPES[dtype]
    row = first(con.execute(
        f"SELECT n, v FROM (SELECT row_number() OVER () AS n, {_q(col)} AS v FROM {relation}) "
        f"WHERE v IS NOT NULL AND TRY_CAST(v AS {target}) IS NULL LIMIT 1"
    ))
    return f"first bad value {row[1]!r} in data row {row[0]}" if row else "values lose precision when cast"
