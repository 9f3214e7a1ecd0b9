"""L1 storage: the SQLite connection (WAL, foreign keys, atomic) and recorded migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import NotFound, StoreError
from mlbox.store.layout import BoxPaths, open_meta
from mlbox.store.migrations import MIGRATIONS, Migration, applied, migrate
from mlbox.store.sqlite import Database

from .conftest import raw_connect


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Database(tmp_path / "t.db")
    d.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    d.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parent(id))")
    d.execute("CREATE TABLE t (v TEXT)")
    yield d
    d.close()


def values(path: Path) -> list[str]:
    """Rows of `t` as another connection (another process) sees them."""
    conn = raw_connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY rowid")]
    finally:
        conn.close()


def test_wal_mode_and_pragmas(db: Database, tmp_path: Path) -> None:
    assert db.scalar("PRAGMA journal_mode") == "wal"
    assert db.scalar("PRAGMA foreign_keys") == 1
    assert db.scalar("PRAGMA busy_timeout") == 30000
    assert db.scalar("PRAGMA synchronous") == 1  # NORMAL
    # WAL is a property of the file: a fresh connection sees it too
    conn = raw_connect(tmp_path / "t.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_synchronous_full_and_busy_timeout(tmp_path: Path) -> None:
    d = Database(tmp_path / "f.db", busy_timeout_ms=1234, synchronous="FULL")
    assert d.scalar("PRAGMA synchronous") == 2
    assert d.scalar("PRAGMA busy_timeout") == 1234
    d.close()


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO child (id, parent) VALUES (1, 42)")
    db.execute("INSERT INTO parent (id) VALUES (42)")
    db.execute("INSERT INTO child (id, parent) VALUES (1, 42)")
    assert db.integrity() == []


def test_atomic_commits(db: Database, tmp_path: Path) -> None:
    with db.atomic():
        db.execute("INSERT INTO t VALUES ('a')")
        db.execute("INSERT INTO t VALUES ('b')")
        assert db.conn.in_transaction
        assert values(tmp_path / "t.db") == []  # not visible to others before commit
    assert not db.conn.in_transaction
    assert values(tmp_path / "t.db") == ["a", "b"]


def test_atomic_rolls_back_on_exception(db: Database, tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with db.atomic():
            db.execute("INSERT INTO t VALUES ('a')")
            1 / 0  # noqa: B018
    assert not db.conn.in_transaction
    assert values(tmp_path / "t.db") == []
    assert db.query("SELECT * FROM t") == []


def test_nested_atomic_rolls_back_inner_savepoint_only(db: Database, tmp_path: Path) -> None:
    with db.atomic():
        db.execute("INSERT INTO t VALUES ('outer-before')")
        with pytest.raises(RuntimeError):
            with db.atomic():
                db.execute("INSERT INTO t VALUES ('inner')")
                raise RuntimeError("inner fails")
        db.execute("INSERT INTO t VALUES ('outer-after')")
    assert values(tmp_path / "t.db") == ["outer-before", "outer-after"]


def test_nested_atomic_commits_with_outer(db: Database, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with db.atomic():
            with db.atomic():
                db.execute("INSERT INTO t VALUES ('inner')")
            raise RuntimeError("outer fails after the inner block finished")
    assert values(tmp_path / "t.db") == []
    with db.atomic():
        with db.atomic():
            db.execute("INSERT INTO t VALUES ('inner')")
    assert values(tmp_path / "t.db") == ["inner"]


def test_outer_atomic_takes_the_write_lock(db: Database, tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: a second writer cannot start while the block is open, even before it writes."""
    other = Database(tmp_path / "t.db", busy_timeout_ms=50)
    try:
        with db.atomic():
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                with other.atomic():
                    pass
        with other.atomic():  # free again after commit
            other.execute("INSERT INTO t VALUES ('x')")
    finally:
        other.close()


def test_query_helpers(db: Database) -> None:
    db.executemany("INSERT INTO t VALUES (?)", [("a",), ("b",)])
    assert db.query("SELECT v FROM t ORDER BY v") == [{"v": "a"}, {"v": "b"}]
    assert db.one("SELECT v FROM t WHERE v = ?", ("b",)) == {"v": "b"}
    assert db.one("SELECT v FROM t WHERE v = 'zz'") is None
    assert db.scalar("SELECT count(*) FROM t") == 2
    assert db.scalar("SELECT v FROM t WHERE v = 'zz'") is None


def test_cannot_open_in_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Database(tmp_path / "no" / "such" / "dir" / "x.db")


# migrations -------------------------------------------------------------------------


def test_migrations_are_recorded(tmp_path: Path) -> None:
    d = Database(tmp_path / "meta.db")
    ran = migrate(d)
    assert ran == [m.name for m in MIGRATIONS]
    assert applied(d) == [m.name for m in MIGRATIONS]
    rows = d.query("SELECT name, applied_at FROM _migrations ORDER BY rowid")
    assert [r["name"] for r in rows] == [m.name for m in MIGRATIONS]
    assert all(r["applied_at"].endswith("Z") for r in rows)
    for table in ("users", "tokens", "audit", "audit_head", "box_meta", "entities", "feature_views"):
        assert d.scalar("SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?", (table,)) == 1
    d.close()


def test_migration_names_are_unique_and_ordered() -> None:
    names = [m.name for m in MIGRATIONS]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert names[0] == "0001_core"


def test_reopening_does_not_rerun(tmp_path: Path) -> None:
    d = Database(tmp_path / "meta.db")
    migrate(d)
    stamps = d.query("SELECT * FROM _migrations")
    d.close()
    d = Database(tmp_path / "meta.db")
    assert migrate(d) == []
    assert d.query("SELECT * FROM _migrations") == stamps
    d.close()


def test_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(db: Database) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration bug")

    d = Database(tmp_path / "meta.db")
    with pytest.raises(RuntimeError):
        migrate(d, (*MIGRATIONS, Migration("9999_broken", broken)))
    assert not d.conn.in_transaction
    assert d.scalar("SELECT count(*) FROM sqlite_master WHERE name='half_done'") == 0
    assert "9999_broken" not in applied(d)
    d.close()


def test_unknown_migration_means_newer_mlbox(tmp_path: Path) -> None:
    d = Database(tmp_path / "meta.db")
    migrate(d)
    d.execute("INSERT INTO _migrations (name, applied_at) VALUES ('0099_future', '2099-01-01T00:00:00.000000Z')")
    with pytest.raises(StoreError, match="newer mlbox") as info:
        migrate(d)
    assert "0099_future" in str(info.value)
    assert not d.conn.in_transaction
    d.close()


def test_box_refuses_meta_db_from_a_newer_mlbox(box: Box, home: Path) -> None:
    box.db.execute("INSERT INTO _migrations (name, applied_at) VALUES ('0099_future', 'x')")
    box.close()
    with pytest.raises(StoreError, match="newer mlbox"):
        Box(load_settings(home))


def test_older_box_is_migrated_on_open(home: Path) -> None:
    home.mkdir()
    d = Database(home / "meta.db")
    assert migrate(d, MIGRATIONS[:1]) == ["0001_core"]
    assert d.scalar("SELECT count(*) FROM sqlite_master WHERE name='feature_views'") == 0
    d.close()

    with Box(load_settings(home)) as b:
        assert applied(b.db) == [m.name for m in MIGRATIONS]
        assert b.db.scalar("SELECT count(*) FROM sqlite_master WHERE name='feature_views'") == 1
        assert b.db.integrity() == []


def test_open_meta_requires_an_existing_box(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no mlbox box") as info:
        open_meta(BoxPaths(tmp_path / "nothing"), busy_timeout_ms=100, synchronous="NORMAL", reason="--home")
    assert "--home" in str(info.value)
    assert not (tmp_path / "nothing").exists()


def test_create_layout(box: Box, home: Path) -> None:
    for name in ("features", "predictions", "artifacts", "bentoml", "keys", "logs"):
        assert (home / name).is_dir(), name
    assert (home / "keys").stat().st_mode & 0o777 == 0o700
    key = home / "keys" / "audit.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_bytes()) == 32
