"""Bombs on ingest: Parquet files whose footer promises billions of rows or a million row groups, gzip CSVs that
inflate a thousandfold, transformations that multiply rows, compressed formats ingest does not bound.

Each is refused with one ValidationError naming the limit and its setting, from the footer or the
inflating stream (before the data is read: the tests bound the time it may take), with no batch, no
snapshot, no file left under features/ or tmp/, and nothing written next to the box; the box then
ingests a good file. The limits are set small here (`OfflineStore.limits`) so the bombs stay small.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbox.box import Box
from mlbox.errors import MlboxError, UsageError, ValidationError
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.limits import IngestLimits, check_file
from mlbox.features.push import validate as push_validate

from ..conftest import OS_USER
from ._hostile import tree

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})
VIEW = FeatureView("usage", "customer", "ts", (Field("calls", "int64"),))
SMALL = IngestLimits(rows=1_000, bytes=1_000_000, row_groups=10)


def good_frame(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": range(n), "ts": [T0] * n, "calls": range(n)})


@pytest.fixture
def fs_box(box: Box) -> Box:
    box.features.apply([CUSTOMER, VIEW], OS_USER)
    box.features.offline.limits = SMALL
    return box


def refused(box: Box, source: object, exc: type[MlboxError], pattern: str, *, seconds: float = 5.0, after: bool = True) -> str:
    """Ingest `source` into `usage`: `exc` matching `pattern`, fast, nothing committed or left anywhere."""
    fs, home = box.features, box.paths.home
    snap, inside, outside = fs.snapshot(), tree(home), tree(home.parent, skip=home)
    started = time.perf_counter()
    with pytest.raises(exc, match=pattern) as info:
        fs.ingest("usage", source, OS_USER)
    assert time.perf_counter() - started < seconds, "the bomb was read, not refused from its metadata"
    assert fs.catalog.batches("usage", fs.view("usage").version) == []
    assert fs.snapshot() == snap
    assert tree(home) == inside, "ingest left files in the box"
    assert tree(home.parent, skip=home) == outside, "ingest wrote outside the box"
    if after:  # the box is fine afterwards: a good file goes in
        ingest_good(box)
    return str(info.value)


def ingest_good(box: Box) -> None:
    good = box.paths.home.parent / "good.parquet"
    good_frame().to_parquet(good)
    assert box.features.ingest("usage", good, OS_USER, duplicate_policy="keep-last").batch.row_count == 5


def rle_bomb(path: Path, rows: int, row_group: int | None = None) -> Path:
    """A column of one repeated value: a few KB on disk, `rows` rows once read."""
    table = pa.table({
        "customer_id": pa.array([1] * rows, pa.int64()),
        "ts": pa.array([T0.to_pydatetime()] * rows, pa.timestamp("us", tz="UTC")),
        "calls": pa.array([0] * rows, pa.int64()),
    })  # fmt: skip
    pq.write_table(table, path, row_group_size=row_group or rows, compression="zstd")
    return path


def test_parquet_row_bomb_is_refused_from_the_footer(fs_box: Box, tmp_path: Path) -> None:
    bomb = rle_bomb(tmp_path / "rows.parquet", 50_000)
    assert bomb.stat().st_size < 20_000  # tiny on disk
    message = refused(fs_box, bomb, ValidationError, r"50,000 rows, more than features\.max_ingest_rows \(1,000 rows\)")
    assert "nothing was ingested" in message


def test_parquet_row_group_bomb_is_refused(fs_box: Box, tmp_path: Path) -> None:
    fs_box.features.offline.limits = IngestLimits(rows=10_000, bytes=10_000_000, row_groups=10)
    bomb = rle_bomb(tmp_path / "groups.parquet", 500, row_group=1)
    refused(fs_box, bomb, ValidationError, r"500 row groups, more than features\.max_row_groups \(10 row groups\)")


def test_parquet_byte_estimate_counts_repeated_values(fs_box: Box, tmp_path: Path) -> None:
    """RLE makes the encoded size tiny; rows x value width is what memory holds."""
    fs_box.features.offline.limits = IngestLimits(rows=10_000_000, bytes=1_000_000, row_groups=100)
    bomb = rle_bomb(tmp_path / "wide.parquet", 200_000)
    encoded = pq.ParquetFile(bomb).metadata.row_group(0).total_byte_size
    assert encoded < 1_000_000  # the footer's own size would let it through
    refused(fs_box, bomb, ValidationError, r"would take about 4,800,000 bytes, more than features\.max_ingest_bytes")


def test_parquet_with_a_giant_footer_length_is_refused(fs_box: Box, tmp_path: Path) -> None:
    path = tmp_path / "footer.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 64 + (2**31).to_bytes(4, "little") + b"PAR1")
    refused(fs_box, path, ValidationError, r"Parquet footer is 2,147,483,648 bytes")


def test_gzip_csv_bomb_stops_at_the_byte_limit(fs_box: Box, tmp_path: Path) -> None:
    """100 MB of CSV in ~100 KB of gzip: refused after inflating ~1 MB, in bounded memory."""
    path = tmp_path / "bomb.csv.gz"
    row = b"1,2025-01-01T00:00:00Z,0\n"
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(b"customer_id,ts,calls\n")
        for _ in range(100):
            fh.write(row * 40_000)  # 1 MB a time
    assert path.stat().st_size < 1_000_000
    refused(fs_box, path, ValidationError, r"inflates to at least 1,0\d\d,\d\d\d bytes, more than features\.max_ingest_bytes", seconds=3)


def test_multi_member_gzip_is_counted_whole(tmp_path: Path) -> None:
    """A second gzip member after a small first one is inflated too (DuckDB would read it)."""
    path = tmp_path / "members.csv.gz"
    path.write_bytes(gzip.compress(b"customer_id,ts,calls\n") + gzip.compress(b"1,2025-01-01T00:00:00Z,0\n" * 100_000))
    with pytest.raises(ValidationError, match="inflates to at least"):
        check_file(path, SMALL)


def test_plain_csv_over_the_byte_limit_is_refused_from_its_size(fs_box: Box, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"customer_id,ts,calls\n" + b"1,2025-01-01T00:00:00Z,0\n" * 50_000)
    refused(fs_box, path, ValidationError, r"holds 1,250,021 bytes, more than features\.max_ingest_bytes \(1,000,000 bytes\)")


def test_csv_rows_over_the_limit_are_refused_before_anything_is_written(fs_box: Box, tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    good_frame(2_000).to_csv(path, index=False)
    refused(fs_box, path, ValidationError, r"2,000 rows, more than features\.max_ingest_rows")


def test_a_frame_over_the_row_limit_is_refused(fs_box: Box) -> None:
    refused(fs_box, good_frame(1_001), ValidationError, r"DataFrame: 1,001 rows, more than features\.max_ingest_rows")


def test_a_transformation_that_multiplies_rows_is_stopped(fs_box: Box, tmp_path: Path) -> None:
    """A cross join with range() turns 5 rows into 5 billion: counting stops one past the limit."""
    source = tmp_path / "src.csv"
    good_frame().to_csv(source, index=False)
    view = FeatureView("usage", "customer", "ts", (Field("calls", "int64"),), source=str(source),
                       transformation="SELECT customer_id + r.range AS customer_id, ts, calls FROM source, range(1000000000) r")  # fmt: skip
    fs_box.features.apply([CUSTOMER, view], OS_USER)
    refused(fs_box, None, ValidationError, r"transformation's output .*1,001 rows, more than features\.max_ingest_rows", after=False)
    fs_box.features.apply([CUSTOMER, VIEW], OS_USER)
    ingest_good(fs_box)


@pytest.mark.parametrize("suffix", [".csv.zip", ".csv.zst", ".csv.bz2", ".csv.xz", ".parquet.gz", ".pkl", ".joblib", ".npy"])
def test_formats_ingest_cannot_bound_are_refused_by_name(fs_box: Box, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_bytes(gzip.compress(b"customer_id,ts,calls\n1,2025-01-01T00:00:00Z,0\n"))
    refused(fs_box, path, UsageError, r"use a \.csv, \.csv\.gz, \.tsv or \.parquet file")


def test_a_corrupt_gzip_is_one_clear_error(fs_box: Box, tmp_path: Path) -> None:
    path = tmp_path / "broken.csv.gz"
    whole = gzip.compress(b"customer_id,ts,calls\n" + b"".join(b"%d,2025-01-01T00:00:00Z,%d\n" % (i, i * 7) for i in range(5000)))
    path.write_bytes(whole[: len(whole) // 2])  # cut mid-stream
    refused(fs_box, path, ValidationError, r"not a valid gzip file")


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "fifo"])
def test_devices_and_pipes_are_not_sources(fs_box: Box, tmp_path: Path, target: str) -> None:
    """An endless device or a pipe behind a .csv name would never stop: only regular files are read."""
    import os

    link = tmp_path / "endless.csv"
    if target == "fifo":
        os.mkfifo(link)
    else:
        link.symlink_to(target)
    refused(fs_box, link, UsageError, r"not found")


def test_pushed_files_and_labels_files_are_held_to_the_limits(fs_box: Box, tmp_path: Path) -> None:
    bomb = rle_bomb(tmp_path / "push.parquet", 50_000)
    version = fs_box.features.view("usage")
    with pytest.raises(ValidationError, match=r"features\.max_ingest_rows"):
        push_validate(version, str(bomb), duplicate_policy="reject", naive_timestamps="utc", base_dir=tmp_path, limits=SMALL)
    from mlbox.serve.labels import ingest_labels

    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"request_id": ["r"] * 50_000, "label": [1] * 50_000}), labels)
    # one cataloged log file (never read: the labels file is refused first)
    fs_box.db.execute(
        "INSERT INTO prediction_batches (deployment, path, rows, min_ts, max_ts, created_at) VALUES (?, ?, 1, ?, ?, ?)",
        ("churn", "predictions/churn/log.parquet", "2025-01-01", "2025-01-01", "2025-01-01"),
    )
    before = tree(fs_box.paths.home)
    with pytest.raises(ValidationError, match=r"50,000 rows, more than features\.max_ingest_rows"):
        ingest_labels(fs_box.db, fs_box.audit, fs_box.paths.predictions, "churn", labels, OS_USER, limits=SMALL)
    assert tree(fs_box.paths.home) == before


def test_limits_come_from_the_settings(box: Box) -> None:
    """mlbox.toml's [features] limits reach the offline store a box opens."""
    from mlbox.config import load_settings

    (box.paths.home / "mlbox.toml").write_text("[features]\nmax_ingest_rows = 7\nmax_ingest_bytes = 9000\nmax_row_groups = 3\n")
    settings = load_settings(box.paths.home, environ={})
    assert IngestLimits.from_settings(settings) == IngestLimits(rows=7, bytes=9000, row_groups=3)
    reopened = Box(settings, actor=OS_USER)
    try:
        assert reopened.features.offline.limits == IngestLimits(rows=7, bytes=9000, row_groups=3)
    finally:
        reopened.close()


def test_good_files_under_the_limits_still_ingest(fs_box: Box, tmp_path: Path) -> None:
    csv, gz, parquet = tmp_path / "a.csv", tmp_path / "b.csv.gz", tmp_path / "c.parquet"
    good_frame(50).to_csv(csv, index=False)
    gz.write_bytes(gzip.compress(csv.read_bytes()))
    good_frame(50).assign(customer_id=range(100, 150)).to_parquet(parquet)
    fs = fs_box.features
    assert fs.ingest("usage", csv, OS_USER).batch.row_count == 50
    fs_box.features.offline.limits = IngestLimits(rows=1_000, bytes=1_000_000, row_groups=10)
    assert fs.ingest("usage", gz, OS_USER, duplicate_policy="keep-last").batch.row_count == 50
    assert fs.ingest("usage", parquet, OS_USER).batch.row_count == 50
