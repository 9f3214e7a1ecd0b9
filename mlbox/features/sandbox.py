"""What user SQL may do in DuckDB: one SELECT, over what mlbox registered, on a locked-down connection.

Feature-view transformations (and `features sql`) are user SQL run inside mlbox's process.
`check_select` refuses every statement but one SELECT; `sandbox` then turns off DuckDB's
file system, network, extensions and settings for everything mlbox did not name, so even a
SELECT (`read_text('/etc/passwd')`, `read_parquet('http://...')`, `query('...')`) reaches
nothing else. Whatever the SQL may read is registered before `sandbox` is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb

from mlbox.errors import UsageError, ValidationError

# Applied in this order; `lock_configuration` last, so no later statement can undo one.
SANDBOX_SETTINGS = (
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET python_enable_replacements = false",  # no scanning of Python variables in the caller's frame
    "SET enable_external_access = false",
    "SET lock_configuration = true",
)
SANDBOX_RULE = "transformations may only read the declared source"


def sandbox(con: duckdb.DuckDBPyConnection, paths: Sequence[Path] = (), directories: Sequence[Path] = ()) -> None:
    """Lock `con` down: no files, URLs, extensions or setting changes beyond `paths` and `directories`.

    DuckDB checks every path at bind and at scan time against these lists; `lock_configuration`
    keeps the SQL from widening them. Temporary spill files under `temp_directory` still work.
    """
    if paths:
        con.execute("SET allowed_paths = ?", [[str(p) for p in paths]])
    if directories:
        con.execute("SET allowed_directories = ?", [[str(d).rstrip("/") + "/" for d in directories]])
    for statement in SANDBOX_SETTINGS:
        con.execute(statement)


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check_select(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> None:
    """Refuse anything but one SELECT statement."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise UsageError(f"{what}: {first_line(exc)}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise UsageError(f"{what} must be a single SELECT statement")


def check_transformation(con: duckdb.DuckDBPyConnection, view: str, sql: str) -> None:
    """Refuse a transformation that is not one SELECT (COPY, ATTACH, INSTALL, LOAD, SET, ...)."""
    try:
        check_select(con, sql, f"transformation of view {view!r}")
    except UsageError as exc:
        raise UsageError(f"{exc.message}: {SANDBOX_RULE}", hint="write one SELECT ... FROM source") from None


def sandbox_error(view: str, exc: duckdb.Error) -> ValidationError:
    """The one error for a transformation that reached for something other than its source."""
    detail = first_line(exc).removeprefix("Permission Error: ").split(" - ")[0]
    return ValidationError(
        f"transformation of view {view!r} was refused ({detail}): {SANDBOX_RULE}",
        hint="read the table `source`; no other files, URLs, databases, extensions or settings",
    )
