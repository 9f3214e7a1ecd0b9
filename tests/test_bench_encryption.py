"""`mlbox bench encryption`: every operation on a plain and an encrypted twin box in the same run, medians of rounds,
ratios of those medians, and the encrypted twin really encrypted at rest."""

from __future__ import annotations

import shutil
import sqlite3
import statistics
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from mlbox.bench import encryption
from mlbox.bench.encryption import ENCRYPTED, PLAIN, Compared, Scale, alternate
from mlbox.bench.report import Recorder
from mlbox.store import crypt

TINY = Scale(entities=100, rows_per_entity=10, features=4, labels=500, trees=5, log_records=300, lookups=30, seconds=0.3,
             rounds=3)  # fmt: skip
OPERATIONS = ["ingest", "training set", "materialize", "online lookup", "model load", "predict 1 row", "prediction log flush"]


def test_a_row_is_the_medians_of_the_rounds_and_their_ratio() -> None:
    # not the mean, not the best round of each, not a median of per-round ratios
    c = Compared("training set", "s", plain=(1.0, 9.0, 2.0), encrypted=(3.0, 4.0, 100.0))
    row = c.row()
    assert (row.mlbox, row.floor, row.ratio) == (4.0, 2.0, 2.0)
    assert row.name == "training set (median of 3 rounds)" and row.floor_name == "plain box, same run"
    assert (row.target, row.ok) == ("report", None)
    # a throughput's ratio is still "times slower": plain rows/s over encrypted rows/s
    rps = Compared("ingest", "rows/s", plain=(900.0, 1000.0, 1100.0), encrypted=(400.0, 500.0, 450.0)).row()
    assert rps.ratio == 1000.0 / 450.0
    # the lookup's target: within 2x of plain
    assert Compared("lookup", "us", (10.0, 10.0, 10.0), (19.0, 21.0, 20.0), limit=2.0).row().ok is True
    over = Compared("lookup", "us", (10.0, 10.0, 10.0), (25.0, 21.0, 30.0), limit=2.0).row()
    assert over.ok is False and over.target == "<= 2x plain"


def test_rounds_alternate_which_box_goes_first() -> None:
    calls: list[tuple[str, int]] = []
    sides: Any = {PLAIN: PLAIN, ENCRYPTED: ENCRYPTED}  # alternate only hands each side to the operation

    def op(side: Any, turn: int) -> float:
        calls.append((side, turn))
        return float(len(calls))

    plain, enc = alternate(4, op, sides)
    assert calls == [(PLAIN, 0), (ENCRYPTED, 0), (ENCRYPTED, 1), (PLAIN, 1), (PLAIN, 2), (ENCRYPTED, 2), (ENCRYPTED, 3), (PLAIN, 3)]
    assert plain == [1.0, 4.0, 5.0, 8.0] and enc == [2.0, 3.0, 6.0, 7.0]  # each box's own figures, round by round


def test_with_rows_sizes_the_batches() -> None:
    assert encryption.FULL.rows == 1_000_000 and encryption.QUICK.rows == 20_000
    assert encryption.QUICK.with_rows(50_000).rows == 50_000 and encryption.QUICK.with_rows(50_000).rounds == 3


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Compared], Recorder]:
    work = tmp_path_factory.mktemp("bench-encryption")
    rec = Recorder(None, None)
    return work, encryption.measure(work, TINY, rec), rec


@pytest.mark.slow
def test_every_operation_is_measured_on_both_boxes_in_the_same_run(measured: tuple[Path, list[Compared], Recorder]) -> None:
    _, compared, rec = measured
    assert [next(op for op in OPERATIONS if c.name.startswith(op)) for c in compared] == OPERATIONS
    assert [r.unit for r in rec.rows] == ["rows/s", "s", "s", "us", "s", "ms", "s", "files"]
    for c, row in zip(compared, rec.rows, strict=False):
        assert len(c.plain) == len(c.encrypted) == TINY.rounds and all(v > 0 for v in (*c.plain, *c.encrypted)), c
        # the row reports the medians of this run's rounds, and the ratio of those two medians
        assert row.mlbox == statistics.median(c.encrypted) and row.floor == statistics.median(c.plain)
        expected = row.floor / row.mlbox if row.unit == "rows/s" else row.mlbox / row.floor
        assert row.ratio == pytest.approx(expected) and f"median of {TINY.rounds} rounds" in row.name
        assert row.floor_name == "plain box, same run"
    lookup = rec.rows[3]
    assert lookup.target == "<= 2x plain" and lookup.ok is not None


@pytest.mark.slow
def test_the_encrypted_box_is_encrypted_and_the_plain_one_is_not(measured: tuple[Path, list[Compared], Recorder], tmp_path: Path) -> None:
    work, _, rec = measured
    assert crypt.box_encrypted(work / ENCRYPTED) and not crypt.box_encrypted(work / PLAIN)
    enc, plain = encryption.ops.at_rest(work / ENCRYPTED), encryption.ops.at_rest(work / PLAIN)
    assert all(total > 0 for _, total in enc.values()), enc  # every store holds files to judge
    assert enc == {store: (total, total) for store, (_, total) in enc.items()}, enc  # all of them encrypted
    assert all(e == 0 for e, _ in plain.values()), plain
    assert rec.rows[-1].ok is True and rec.rows[-1].mlbox == sum(total for _, total in enc.values())
    # copied out of the box, an encrypted prediction log and online.db cannot be read; the plain twin's can
    for name, readable in ((PLAIN, True), (ENCRYPTED, False)):
        log = next((work / name / "predictions").rglob("*.parquet"))
        copy = shutil.copy(log, tmp_path / f"{name}.parquet")
        online = shutil.copy(work / name / "online.db", tmp_path / f"{name}.db")
        if readable:
            assert pq.read_table(copy).num_rows > 0
            assert sqlite3.connect(online).execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
            continue
        with pytest.raises(OSError):
            pq.read_table(copy)
        with pytest.raises(sqlite3.DatabaseError):
            sqlite3.connect(online).execute("SELECT count(*) FROM sqlite_master").fetchone()
        assert b"primary" not in Path(copy).read_bytes()  # the variant of every logged request


@pytest.mark.slow
def test_the_cli_reports_json_rows(monkeypatch: pytest.MonkeyPatch, cli: Any) -> None:
    monkeypatch.setattr(encryption, "QUICK", TINY)
    result = cli("--json", "bench", "encryption", "--quick", "--rows", "500")
    assert result.exit_code == 0, (result.stdout, result.exception)
    rows = result.json()
    assert [r["unit"] for r in rows] == ["rows/s", "s", "s", "us", "s", "ms", "s", "files"]
    assert "500 rows" in rows[0]["name"]  # --rows sized the batches
    for r in rows:
        assert set(r) == {"name", "mlbox", "floor", "unit", "target", "ok", "floor_name", "ratio"}
    assert all(r["ratio"] and r["ratio"] > 0 for r in rows[:-1])
