"""The encryption core: keyring, Parquet modular encryption through Arrow, sealed blobs, SQLCipher databases."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbox.store import crypt, keyring
from mlbox.store.sqlite import Database

SECRET = "alice@example.com"


@pytest.fixture
def home(tmp_path: Path):
    box = tmp_path / "box"
    (box / "features").mkdir(parents=True)
    ring = crypt.create_keyring(box)
    yield box, ring
    keyring.unregister(box)


def _table() -> pa.Table:
    return pa.table({"id": list(range(5000)), "email": [f"{SECRET}{i}" for i in range(5000)], "x": [i * 0.5 for i in range(5000)]})


def test_parquet_written_in_the_box_is_encrypted_and_reads_back(home, tmp_path: Path) -> None:
    box, _ = home
    path = box / "features" / "b.parquet"
    crypt.write_table(_table(), path)
    assert crypt.is_encrypted(path)
    assert SECRET.encode() not in path.read_bytes()
    assert crypt.read_table(path).equals(_table())
    con = duckdb.connect()
    rel = crypt.source(con, [path])
    assert con.execute(f"SELECT count(*), sum(id) FROM {rel} WHERE x > 10").fetchone() == (4979, sum(range(21, 5000)))
    copied = tmp_path / "copied.parquet"  # a file copied out of the box is unreadable without the key
    copied.write_bytes(path.read_bytes())
    with pytest.raises(OSError):
        pq.read_table(copied)
    with pytest.raises(duckdb.Error):
        duckdb.sql(f"SELECT * FROM read_parquet('{copied}')").fetchall()
    with pytest.raises(crypt.KeyProblem, match="encrypted and no key"):
        crypt.read_table(copied)


def test_files_outside_the_stores_stay_plain(home, tmp_path: Path) -> None:
    box, _ = home
    for path in (tmp_path / "user.parquet", box / "training_set.parquet", box / "data" / "customers.parquet"):
        path.parent.mkdir(exist_ok=True)
        crypt.write_table(_table(), path)  # a user's file, or an export written where they asked: theirs to read
        assert not crypt.is_encrypted(path)
        assert pq.read_table(path).num_rows == 5000
        assert crypt.source(duckdb.connect(), [path]).startswith("read_parquet(")


def test_copy_gives_the_same_rows_and_stats_as_duckdb(home, tmp_path: Path) -> None:
    box, _ = home
    con = duckdb.connect()
    query = "SELECT range AS id, 'v' || range AS s, CASE WHEN range % 7 = 0 THEN NULL ELSE range * 1.5 END AS x FROM range(300000)"
    enc = crypt.copy(con, query, box / "features" / "c.parquet")
    plain = crypt.copy(con, query, tmp_path / "c.parquet")
    assert enc.rows == plain.rows == 300000
    for name in ("id", "x"):
        assert float(enc.columns[name]["min"]) == float(plain.columns[name]["min"])
        assert float(enc.columns[name]["max"]) == float(plain.columns[name]["max"])
        assert int(enc.columns[name]["null_count"]) == int(plain.columns[name]["null_count"])
    a = con.sql(f"SELECT * FROM {crypt.source(con, [box / 'features' / 'c.parquet'])} ORDER BY id").fetchall()
    b = con.sql(f"SELECT * FROM {crypt.source(con, [tmp_path / 'c.parquet'])} ORDER BY id").fetchall()
    assert a == b


def test_files_under_old_and_new_keys_read_together_and_union_by_name(home) -> None:
    box, ring = home
    first = box / "features" / "a.parquet"
    crypt.write_table(pa.table({"id": [1, 2]}), first)
    ring.add_key()
    second = box / "features" / "b.parquet"
    crypt.write_table(pa.table({"id": [3], "extra": ["x"]}), second)
    con = duckdb.connect()
    rel = crypt.source(con, [first, second], union_by_name=True)
    assert con.sql(f"SELECT id, extra FROM {rel} ORDER BY id").fetchall() == [(1, None), (2, None), (3, "x")]


def test_sealed_blobs_name_their_key_and_refuse_changed_bytes(home) -> None:
    box, ring = home
    (box / "artifacts").mkdir()
    path = box / "artifacts" / "model.bin"
    crypt.write_bytes(path, b"model bytes " + SECRET.encode())
    assert crypt.is_encrypted(path) and SECRET.encode() not in path.read_bytes()
    assert crypt.sealed_key_id(path) == ring.current
    assert crypt.read_bytes(path) == b"model bytes " + SECRET.encode()
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(crypt.KeyProblem, match="wrong key or changed bytes"):
        crypt.read_bytes(path)


def test_wrong_and_missing_master_key_and_loose_modes_are_refused(home) -> None:
    box, _ = home
    keyring.unregister(box)
    with pytest.raises(crypt.KeyProblem, match="wrong key"):
        crypt.open_box(box, keyring.new_master_key())
    os.chmod(box / "keys" / "master.key", 0o644)
    with pytest.raises(crypt.KeyProblem, match="chmod 600"):
        crypt.open_box(box)
    (box / "keys" / "master.key").unlink()
    with pytest.raises(crypt.KeyProblem, match="master key is missing"):
        crypt.open_box(box)


def test_sqlcipher_database_is_unreadable_copied_and_survives_a_rekey_under_another_connection(home, tmp_path: Path) -> None:
    box, ring = home
    db = Database(box / "meta.db")
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES (?)", [SECRET])
    other = Database(box / "meta.db")
    assert other.scalar("SELECT v FROM t") == SECRET
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert SECRET.encode() not in (box / "meta.db").read_bytes()
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(box / "meta.db").execute("SELECT * FROM t").fetchall()
    new = ring.add_key()  # what `mlbox keys rotate` does to a database: rekey it under the new current key
    db.conn.execute(f"PRAGMA rekey = {crypt.sqlcipher_key(ring.key(new))}")
    assert other.scalar("SELECT v FROM t") == SECRET  # reopened with the reloaded keyring, statement run again
    with other.atomic():
        other.execute("INSERT INTO t VALUES ('b')")
    assert db.scalar("SELECT count(*) FROM t") == 2
    assert Database(box / "meta.db").key_id == new
