"""Feature-view transformations run in a locked-down DuckDB: they read the declared source and nothing else."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from mlbox.box import Box
from mlbox.errors import UsageError, ValidationError
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.offline import connect
from mlbox.features.sandbox import sandbox
from mlbox.features.store import FeatureStore

from ..conftest import OS_USER
from .conftest import files_under

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})
FIELDS = (Field("calls", "int64"), Field("per_call", "float64"))
COLUMNS = "customer_id, ts, calls, tickets / greatest(calls, 1)::DOUBLE AS per_call"
REFUSED = r"transformation of view 'leak' was refused .*may only read the declared source"
NOT_SELECT = r"transformation of view 'leak' must be a single SELECT statement: transformations may only read the declared source"


def frame() -> pd.DataFrame:
    return pd.DataFrame({"customer_id": [1, 2, 3], "ts": [T0] * 3, "calls": [4, 0, 10], "tickets": [1, 3, 5]})


def write_source(box: Box) -> Path:
    """The view's declared source: a CSV inside the box."""
    path = box.paths.home / "data" / "usage.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame().to_csv(path, index=False)
    return path


def apply_leak(fs: FeatureStore, transformation: str, source: str | None = None) -> None:
    fs.apply([CUSTOMER, FeatureView("leak", "customer", "ts", FIELDS, source=source, transformation=transformation)])


def assert_nothing_committed(fs: FeatureStore, box: Box, exc: type[Exception], pattern: str, source: object) -> str:
    """The ingest raises `exc` matching `pattern`; no batch, no new snapshot, no file under features/."""
    snap, files = fs.snapshot(), files_under(box.paths.features)
    with pytest.raises(exc, match=pattern) as info:
        fs.ingest("leak", source)
    assert fs.catalog.batches("leak", fs.view("leak").version) == []
    assert fs.snapshot() == snap
    assert files_under(box.paths.features) == files
    return str(info.value)


def escapes(box: Box, outside: Path) -> list[str]:
    """SELECT-shaped transformations that reach for something other than `source`."""
    inside = box.paths.home / "data" / "other.csv"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text("customer_id,secret\n1,s3cr3t\n")
    outside.write_text("customer_id,secret\n1,s3cr3t\n")
    return [
        f"SELECT {COLUMNS}, t.content AS leaked FROM source, read_text('/etc/passwd') t",
        f"SELECT {COLUMNS} FROM source JOIN read_csv('{inside}') USING (customer_id)",
        f"SELECT {COLUMNS} FROM source JOIN read_csv('{outside}') USING (customer_id)",
        f"SELECT {COLUMNS} FROM source, read_parquet('http://127.0.0.1:1/x.parquet')",
        f"SELECT {COLUMNS} FROM source, query('SELECT * FROM read_text(''/etc/passwd'')')",
        f"SELECT {COLUMNS} FROM source, read_blob('{box.paths.home}/*')",
        f"SELECT {COLUMNS} FROM source, glob('{outside.parent}/*')",
    ]


@pytest.mark.parametrize("kind", ["dataframe", "declared file"])
def test_reading_anything_but_the_source_is_refused(fs: FeatureStore, box: Box, tmp_path: Path, kind: str) -> None:
    declared = write_source(box)
    for i, sql in enumerate(escapes(box, tmp_path / "outside.csv")):
        apply_leak(fs, sql, source=str(declared.relative_to(box.paths.home)))
        source = frame() if kind == "dataframe" else None  # None: the view's declared CSV
        msg = assert_nothing_committed(fs, box, ValidationError, REFUSED, source)
        assert "s3cr3t" not in msg and "root:" not in msg, f"escape {i} leaked data into the error"
    assert not (Path.home() / ".duckdb").exists(), "an extension was installed"


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO '{tmp}/x.csv'",
        "ATTACH '{tmp}/x.db' AS x",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SELECT * FROM source; COPY (SELECT 1) TO '{tmp}/x.csv'",
    ],
)
def test_statements_that_are_not_a_select_are_refused(fs: FeatureStore, box: Box, tmp_path: Path, statement: str) -> None:
    apply_leak(fs, statement.format(tmp=tmp_path))
    assert_nothing_committed(fs, box, UsageError, NOT_SELECT, frame())
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()
    assert not (Path.home() / ".duckdb").exists()


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv('{tmp}/other.csv')",
        "COPY (SELECT 1) TO '{tmp}/x.csv'",
        "ATTACH '{tmp}/x.db' AS x",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET allowed_paths = ['/etc/passwd']",
        "SELECT * FROM read_parquet('http://127.0.0.1:1/x.parquet')",
    ],
)
def test_the_connection_itself_refuses_escapes(tmp_path: Path, statement: str) -> None:
    """Defence in depth: even a statement past the SELECT check meets a locked DuckDB."""
    declared, other = tmp_path / "source.csv", tmp_path / "other.csv"
    frame().to_csv(declared, index=False)
    frame().to_csv(other, index=False)
    con = connect(threads=1)
    try:
        con.read_csv(str(declared), header=True).create_view("source")
        sandbox(con, [declared])
        with pytest.raises(duckdb.Error, match="Permission|locked|disabled"):
            con.execute(statement.format(tmp=tmp_path)).fetchall()
        # the declared source stays readable, by name and by path
        assert con.execute("SELECT count(*) FROM source").fetchall() == [(3,)]
        assert con.execute(f"SELECT count(*) FROM read_csv('{declared}')").fetchall() == [(3,)]
        assert con.execute("SELECT current_setting('enable_external_access')").fetchall() == [(False,)]
    finally:
        con.close()
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()
    assert not (Path.home() / ".duckdb").exists()


@pytest.mark.parametrize("kind", ["dataframe", "declared file"])
def test_a_legitimate_transformation_still_ingests(fs: FeatureStore, box: Box, kind: str) -> None:
    declared = write_source(box)
    # the declared source may be read by name or, for a file, by its own path
    by_path = f"read_csv('{declared}')" if kind == "declared file" else "source"
    fs.apply(
        [
            CUSTOMER,
            FeatureView("usage", "customer", "ts", FIELDS, source="data/usage.csv",
                        transformation=f"SELECT {COLUMNS} FROM {by_path}"),  # fmt: skip
        ]
    )
    result = fs.ingest("usage", frame() if kind == "dataframe" else None)
    assert result.batch.row_count == 3
    assert fs.sql("SELECT customer_id, calls, per_call FROM usage ORDER BY 1")[1] == [(1, 4, 0.25), (2, 0, 3.0), (3, 10, 0.5)]
    # a plain (untransformed) ingest still writes its batch and statistics under the sandbox
    fs.apply([CUSTOMER, FeatureView("plain", "customer", "ts", (Field("calls", "int64"),))])
    assert fs.ingest("plain", frame().drop(columns=["tickets"])).batch.stats["ts_min"] is not None


TEMPLATES = sorted(p.parent.name for p in (Path(__file__).parents[2] / "templates").glob("*/features.yaml")
                   if "transformation:" in p.read_text())  # fmt: skip


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_transformations_ingest_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str) -> None:
    """Each template's views ingest the same rows with the sandbox as without it."""
    import mlbox.features.offline as offline

    def ingest_all(dest: Path) -> dict[str, list[tuple[object, ...]]]:
        box, _ = Box.init_project(dest, template, OS_USER)
        try:
            fs = box.features
            defs = fs.load()
            fs.apply(defs)
            views = [v for v in defs.views if v.source]
            assert any(v.transformation for v in views)
            for v in views:
                fs.ingest(v.name)
            return {v.name: fs.sql(f'SELECT * FROM "{v.name}" ORDER BY ALL')[1] for v in views}
        finally:
            box.close()

    sandboxed = ingest_all(tmp_path / "sandboxed")
    monkeypatch.setattr(offline, "sandbox", lambda *args, **kwargs: None)
    assert ingest_all(tmp_path / "open") == sandboxed
    assert all(sandboxed.values())
