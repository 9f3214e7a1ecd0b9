"""The feature store in an encrypted box: every box Parquet file it writes is ciphertext; every read gives what a plain box gives.

Each test runs the same operations on a plain box and on an encrypted one (`Box.create(..., encrypt=True)`)
and compares: batches, statistics, training sets (in memory, files in the box's stores, exports),
materialization and online reads, `features sql` with and without masking, and the rewrite that erasure
and retention use. Files copied out of the encrypted box are refused by pyarrow and DuckDB and hold none
of the values written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import PermissionDenied
from mlbox.features import rewrite, stats
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.offline import connect
from mlbox.features.store import FeatureStore
from mlbox.store import crypt, keyring
from mlbox.train.data import read_file

from ..conftest import OS_USER

BASE = pd.Timestamp("2025-03-01T00:00:00Z")
DOMAIN = "@secret-mail.example"  # every email ends with it: no encrypted file may hold it
TIER = "tier-confidential-"
CUSTOMER = Entity("customer", {"customer_id": "int64"})
PROFILE = FeatureView(
    "prof",
    "customer",
    "ts",
    (Field("x", "int64"), Field("score", "float64"), Field("tier", "string"), Field("email", "string", pii=True)),
)
FILTERED = FeatureView(
    "prof_t", "customer", "ts", (Field("x", "int64"), Field("score", "float64")),
    transformation="SELECT customer_id, ts, x, score FROM source WHERE x % 2 = 0",
)  # fmt: skip


def _rows(start: int, n: int) -> pd.DataFrame:
    i = np.arange(start, start + n)
    return pd.DataFrame(
        {
            "customer_id": i % 40,
            "ts": [BASE + pd.Timedelta(minutes=int(k)) for k in i],
            "x": i,
            "score": i * 0.25,  # batch 1 starts at 0.0: Arrow writes that bound as -0.0
            "tier": [f"{TIER}{k % 5}" for k in i],
            "email": [f"user{k}{DOMAIN}" for k in i],
        }
    )


LABELS = pd.DataFrame(
    {
        "customer_id": [3, 7, 3, 39, 11, 5],
        "ts": [BASE + pd.Timedelta(minutes=m) for m in (50, 130, 400, 10, 999, 620)],
        "y": [1, 0, 1, 0, 1, 0],
    }
)


@dataclass
class Pair:
    plain: FeatureStore
    enc: FeatureStore
    plain_home: Path
    enc_home: Path

    def each(self) -> list[tuple[FeatureStore, Path]]:
        return [(self.plain, self.plain_home), (self.enc, self.enc_home)]


def _fill(fs: FeatureStore, csv: Path) -> None:
    fs.apply([CUSTOMER, PROFILE, FILTERED])
    fs.ingest("prof", csv)  # a user's file outside the box: read as it is
    fs.ingest("prof", _rows(300, 500))  # overlaps the first batch's time range: the join breaks ties by batch
    fs.ingest("prof_t", csv)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("enc")
    csv = root / "rows.csv"
    _rows(0, 600).to_csv(csv, index=False)
    boxes = []
    try:
        for name, encrypt in (("plain", False), ("enc", True)):
            home = root / name
            home.mkdir()
            boxes.append((Box.create(load_settings(home, environ={}), OS_USER, encrypt=encrypt), home))
            _fill(boxes[-1][0].features, csv)
        yield Pair(boxes[0][0].features, boxes[1][0].features, boxes[0][1], boxes[1][1])
    finally:
        for box, home in boxes:
            box.close()
            keyring.unregister(home)


def _batch_files(fs: FeatureStore, view: str = "prof") -> list[Path]:
    return [p for _, p in fs.offline.files(fs.view(view))]


def _refused_outside(path: Path, tmp: Path, *secrets: str) -> None:
    """A copy of `path` out of the box: pyarrow and DuckDB refuse it and none of `secrets` is in its bytes."""
    copied = tmp / f"copied-{path.name}"
    shutil.copyfile(path, copied)
    data = copied.read_bytes()
    for secret in secrets:
        assert secret.encode() not in data
    with pytest.raises(OSError):
        pq.read_table(copied)
    with pytest.raises(duckdb.Error):
        duckdb.connect().execute(f"SELECT * FROM read_parquet('{copied}')").fetchall()
    with pytest.raises(crypt.KeyProblem):
        crypt.read_table(copied)


def test_batches_are_encrypted_and_unreadable_out_of_the_box(pair: Pair, tmp_path: Path) -> None:
    plain, enc = _batch_files(pair.plain), _batch_files(pair.enc)
    assert len(plain) == len(enc) == 2
    for path in plain:  # the check below would notice the values: a plain batch shows them
        assert not crypt.is_encrypted(path) and DOMAIN.encode() in path.read_bytes()
    for path in [*enc, *_batch_files(pair.enc, "prof_t")]:
        assert crypt.is_encrypted(path)
        _refused_outside(path, tmp_path, DOMAIN, TIER)
    for p, e in zip(plain, enc, strict=True):  # same content, read through the key
        assert crypt.read_table(e).equals(pq.read_table(p))


def test_statistics_equal_the_plain_box(pair: Pair) -> None:
    for view in ("prof", "prof_t"):
        plain = [b.stats for b in pair.plain.catalog.batches(view, 1)]
        enc = [b.stats for b in pair.enc.catalog.batches(view, 1)]
        assert json.dumps(enc, sort_keys=True) == json.dumps(plain, sort_keys=True)  # as recorded: -0.0 is not 0.0 here
    assert json.dumps(enc[0]["fields"]["score"]["min"]) == "0.0" and enc[0]["fields"]["score"]["mean"] is not None


def test_sampled_quantile_rows_of_an_encrypted_batch_are_the_plain_ones(pair: Pair, tmp_path: Path) -> None:
    """Past EXACT_QUANTILE_ROWS quantiles come from leading rows of spaced row groups: without DuckDB's
    `parquet_metadata`/`file_row_number`, the encrypted path picks the same rows."""
    table = pa.table({"i": np.arange(300_000), "g": np.arange(300_000) % 7})
    plain, enc = tmp_path / "plain.parquet", pair.enc_home / "features" / "sample.parquet"
    pq.write_table(table, plain, row_group_size=7_000)  # small groups: a sample spans two of them
    crypt.write_table(table, enc, row_group_size=7_000)
    assert crypt.is_encrypted(enc)
    con = connect(threads=2)
    got = {}
    for p in (plain, enc):
        got[p] = sorted(r[0] for r in con.execute(f"SELECT i FROM {stats._sample_relation(con, str(p))}").fetchall())
    assert got[enc] == got[plain]
    starts = (0, 98_000, 196_000, 294_000)  # groups 0, 14, 28 and 42 of 43; the last one is short
    assert got[enc] == [i for a in starts for i in range(a, min(a + stats.SAMPLE_ROWS, 300_000))]
    enc.unlink()


def test_training_set_equals_the_plain_box_and_its_fingerprint_is_stable(pair: Pair) -> None:
    plain = pair.plain.training_set(LABELS, ["prof:*", "prof_t:x"], protected="raw")
    enc = pair.enc.training_set(LABELS, ["prof:*", "prof_t:x"], protected="raw")
    pd.testing.assert_frame_equal(enc.frame, plain.frame)
    assert enc.frame["email"].notna().sum() == 5 and enc.batches == plain.batches
    again = pair.enc.training_set(LABELS, ["prof:*", "prof_t:x"], protected="raw")
    assert again.fingerprint == enc.fingerprint  # batches are pinned by the digest recorded at commit
    masked = pair.enc.training_set(LABELS, ["prof:*"], as_arrow=True)
    assert set(masked.frame.column("email").drop_null().to_pylist()) == {"***"}


def test_training_sets_in_the_stores_are_encrypted_and_exports_are_plain(pair: Pair, tmp_path: Path) -> None:
    """A set written into the box's stores (here `tmp/`, where masked sets are staged) is ciphertext; one written
    where the user asked (`training_set.parquet` beside mlbox.toml, as quickstart does, or outside the box) is
    theirs: plain, readable by their own tools, with the same content as from a plain box."""
    for fs, home in pair.each():
        fs.training_set(LABELS, ["prof:*"], out=home / "tmp" / "snap.parquet", protected="raw")
        fs.training_set(LABELS, ["prof:*"], out=home / "training_set.parquet", protected="raw")
        fs.training_set(LABELS, ["prof:*"], out=tmp_path / f"{home.name}-export.parquet")  # masked: staged encrypted
        fs.training_set(LABELS, ["prof:x"], out=tmp_path / f"{home.name}-x.parquet")  # nothing to mask, staged encrypted
    snap, plain_snap = pair.enc_home / "tmp" / "snap.parquet", pair.plain_home / "tmp" / "snap.parquet"
    assert crypt.is_encrypted(snap) and not crypt.is_encrypted(plain_snap)
    _refused_outside(snap, tmp_path, DOMAIN)
    assert crypt.read_table(snap).equals(pq.read_table(plain_snap))
    pd.testing.assert_frame_equal(read_file(snap), read_file(plain_snap))  # `data.path` of a train spec
    exports = {"export": (tmp_path / "enc-export.parquet", tmp_path / "plain-export.parquet"),
               "x": (tmp_path / "enc-x.parquet", tmp_path / "plain-x.parquet"),
               "home": (pair.enc_home / "training_set.parquet", pair.plain_home / "training_set.parquet")}  # fmt: skip
    for enc, plain in exports.values():
        assert not crypt.is_encrypted(enc) and pq.read_table(enc).equals(pq.read_table(plain))
    assert DOMAIN.encode() not in exports["export"][0].read_bytes()  # masked
    assert not list((pair.enc_home / "tmp").glob("ts-*"))  # staged copies removed
    snap.unlink()


def test_labels_from_an_encrypted_file_of_the_box(pair: Pair) -> None:
    """Labels in the box's stores are ciphertext too: read through the key (the footer limits still apply)."""
    results = []
    for fs, home in pair.each():
        path = home / "tmp" / "labels.parquet"
        crypt.write_table(pa.Table.from_pandas(LABELS, preserve_index=False), path)
        assert crypt.is_encrypted(path) == (fs is pair.enc)
        results.append(fs.training_set(path, ["prof:x", "prof:score"], protected="raw"))
        path.unlink()
    pd.testing.assert_frame_equal(results[1].frame, results[0].frame)
    assert results[1].fingerprint != "" and results[1].label_rows == len(LABELS)


def test_materialize_and_online_lookup(pair: Pair) -> None:
    got = []
    for fs, _ in pair.each():
        (done,) = fs.materialize("prof@1", full=True)
        assert done.rows == 40
        got.append(fs.get_online_features(["prof:x", "prof:email"], [{"customer_id": k} for k in (0, 7, 39, 99)]))
    assert got[1] == got[0]
    assert got[1]["x"][:3] == [760, 767, 799] and got[1]["x"][3] is None


def test_features_sql_reads_decrypted_and_still_masks(pair: Pair) -> None:
    query = "SELECT customer_id, count(*) AS n, sum(x) AS sx, max(email) AS e FROM prof GROUP BY 1 ORDER BY 1"
    raw = [fs.sql(query, protected="raw") for fs, _ in pair.each()]
    assert raw[1] == raw[0] and raw[1][1][0][3].endswith(DOMAIN)
    masked = [fs.sql(query) for fs, _ in pair.each()]
    assert masked[1] == masked[0] and {r[3] for r in masked[1][1]} == {"***"}
    with pytest.raises(PermissionDenied, match="email"):
        pair.enc.sql("SELECT email FROM prof", protected="refuse")
    # the batches are not readable as files through SQL either, even with the raw reader's directory allowed
    files = _batch_files(pair.enc)
    with pytest.raises(Exception, match="(?i)parquet|query failed"):
        pair.enc.sql(f"SELECT * FROM read_parquet('{files[0]}')", protected="raw")


def test_rewrite_writes_encrypted_batches_without_the_rows(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    _rows(0, 300).to_csv(csv, index=False)
    results, boxes = [], []
    try:
        for name, encrypt in (("plain", False), ("enc", True)):
            home = tmp_path / name
            home.mkdir()
            box = Box.create(load_settings(home, environ={}), OS_USER, encrypt=encrypt)
            boxes.append((box, home))
            fs = box.features
            fs.apply([CUSTOMER, PROFILE])
            fs.ingest("prof", csv)
            old = _batch_files(fs)
            drop = rewrite.key_filter(fs.view("prof"), {"customer_id": 7})
            assert drop is not None
            done = rewrite.rewrite_view(fs.catalog, fs.offline, "prof", drop, actor=OS_USER, reason="erasure")
            assert done.rows_removed == 8 and not any(p.exists() for p in old)
            (new,) = _batch_files(fs)
            results.append((new, fs.catalog.batches("prof", 1)[0].stats, fs.sql("SELECT * FROM prof ORDER BY x", protected="raw")))
        (plain_file, plain_stats, plain_rows), (enc_file, enc_stats, enc_rows) = results
        assert crypt.is_encrypted(enc_file) and enc_stats == plain_stats and enc_rows == plain_rows
        assert 7 not in {r[0] for r in enc_rows[1]}
        erased = [f"user{k}{DOMAIN}" for k in range(7, 300, 40)]
        assert not any(e.encode() in plain_file.read_bytes() for e in erased)
        _refused_outside(enc_file, tmp_path, DOMAIN, *erased)
        kept = crypt.read_table(enc_file).column("email").to_pylist()
        assert not set(erased) & set(kept) and len(kept) == 292
    finally:
        for box, home in boxes:
            box.close()
            keyring.unregister(home)


def test_key_rotation_keeps_training_sets_and_reads(tmp_path: Path) -> None:
    """`mlbox keys rotate` rewrites every batch under a new key: the same set comes back, with the same fingerprint
    (the catalog keeps the digest each batch was committed with), and a new ingest is written under the new key."""
    from mlbox.store.boxfiles import parquet_key_id
    from mlbox.store.rotate import rotate

    home = tmp_path / "enc"
    home.mkdir()
    settings = load_settings(home, environ={})
    box = Box.create(settings, OS_USER, encrypt=True)
    try:
        fs = box.features
        fs.apply([CUSTOMER, PROFILE])
        fs.ingest("prof", _rows(0, 200))
        before = fs.training_set(LABELS, ["prof:*"], protected="raw")
        (path,) = _batch_files(fs)
        old_key = parquet_key_id(path)
        rotate(settings, OS_USER, settle_s=0.0)
        assert parquet_key_id(path) not in (None, old_key)
        after = fs.training_set(LABELS, ["prof:*"], protected="raw")
        pd.testing.assert_frame_equal(after.frame, before.frame)
        assert after.fingerprint == before.fingerprint
        fs.ingest("prof", _rows(200, 50))
        assert {parquet_key_id(p) for p in _batch_files(fs)} == {parquet_key_id(path)}
        assert fs.sql("SELECT count(*) FROM prof", protected="raw")[1] == [(250,)]
    finally:
        box.close()
        keyring.unregister(home)
