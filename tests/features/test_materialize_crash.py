"""`kill -9` a real materialize at random points while readers read: they only ever see one whole batch.

Every batch sets all N entities to the same generation `k`, so any read that mixes
generations (some entities new, others old) is a torn write. Readers check whole-table
snapshots through sqlite3 and entity lookups through `get_online_features`.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlbox.box import Box
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.online import leftover_tables, table_name
from mlbox.store.sqlite import Database

from .conftest import open_box

N = 120_000
T0 = pd.Timestamp("2025-01-01T00:00:00Z")
VIEW = FeatureView("gens", "thing", "ts", (Field("gen", "int64"), Field("gen_s", "string"), Field("a", "float64"), Field("b", "float64")))
MATERIALIZE = """
import sys
from mlbox.box import Box
from mlbox.config import load_settings
box = Box(load_settings(sys.argv[1], environ={}))
print("start", flush=True)
box.features.materialize("gens", full=sys.argv[2] == "full")
print("done", flush=True)
"""


def _batch(gen: int) -> pd.DataFrame:
    ids = np.arange(N, dtype="int64")
    return pd.DataFrame({"tid": ids, "ts": T0 + pd.Timedelta(hours=gen), "gen": gen, "gen_s": str(gen), "a": ids * 0.5, "b": float(gen)})


class Readers:
    """Two reader threads (whole-table SQL and entity lookups) that record every generation mix they see."""

    def __init__(self, home: Path, box: Box) -> None:
        self.table = table_name(box.features.view("gens"))
        self.home, self.box = home, box
        self.stop = threading.Event()
        self.seen: list[tuple[str, tuple[int, ...]]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._sql), threading.Thread(target=self._lookups)]

    def __enter__(self) -> Readers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _sql(self) -> None:
        conn = sqlite3.connect(self.home / "online.db", timeout=30)
        while not self.stop.is_set():
            try:
                rows = conn.execute(f'SELECT gen_s, count(*) FROM "{self.table}" GROUP BY gen_s').fetchall()
            except sqlite3.OperationalError as exc:  # e.g. the table renamed away between prepare and step
                self.errors.append(f"sql: {exc}")
                continue
            self.seen.append(("sql", tuple(sorted(int(g) for g, _ in rows))))
            if sum(n for _, n in rows) != N:
                self.errors.append(f"sql: {sum(n for _, n in rows)} rows instead of {N}")
        conn.close()

    def _lookups(self) -> None:
        rng = random.Random(5)
        fs = open_box(self.home).features
        while not self.stop.is_set():
            ids = [{"tid": rng.randrange(N)} for _ in range(300)]
            got = fs.get_online_features(["gens:gen", "gens:gen_s"], ids)
            self.seen.append(("lookup", tuple(sorted(set(got["gen"])))))
            if [str(g) for g in got["gen"]] != got["gen_s"]:
                self.errors.append("lookup: a row's fields come from different batches")
        fs.close()


def _start(home: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", MATERIALIZE, str(home), mode], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
    return proc


def test_killed_materialize_is_all_or_nothing_for_readers(tmp_path: Path) -> None:
    home = tmp_path / "box"
    home.mkdir()
    box = open_box(home)
    fs = box.features
    fs.apply([Entity("thing", {"tid": "int64"}), VIEW])
    fs.ingest("gens", _batch(1))
    fs.materialize("gens")
    started = time.perf_counter()
    fs.ingest("gens", _batch(2))
    fs.materialize("gens")
    took = time.perf_counter() - started  # one ingest plus one incremental run: an upper bound for a kill point
    rng = random.Random(20261201)
    killed = 0
    with Readers(home, box) as readers:
        for gen in range(3, 11):
            fs.ingest("gens", _batch(gen))
            mode = "full" if gen % 3 == 0 else "incremental"
            proc = _start(home, mode)
            time.sleep(rng.uniform(0.0, 1.5 * took))
            if gen % 4 == 0:  # every fourth run completes while the readers read
                proc.wait(60)
            elif proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            proc.wait(30)
            assert proc.stdout is not None
            proc.stdout.close()
            # after each kill the table holds one generation: an earlier one, or this one if the commit beat the kill
            conn = sqlite3.connect(home / "online.db")
            state = conn.execute(f'SELECT DISTINCT gen_s FROM "{readers.table}"').fetchall()
            conn.close()
            assert len(state) == 1 and int(state[0][0]) <= gen, state
        time.sleep(0.2)
    assert killed >= 3, f"only {killed} runs were killed mid-way; the kill points missed"
    assert readers.errors == []
    mixes = [s for s in readers.seen if len(s[1]) != 1]
    assert mixes == [], f"readers saw torn writes: {mixes[:5]}"
    assert len(readers.seen) > 20 and len({s[1] for s in readers.seen}) >= 2  # runs did commit while readers read
    # nothing left behind by the kills; the next run completes and brings everyone to the last batch
    db = Database(home / "online.db")
    assert leftover_tables(db) == []
    db.close()
    fs.materialize("gens")
    got = fs.get_online_features(["gens:gen"], [{"tid": i} for i in range(0, N, 997)])
    assert set(got["gen"]) == {10}
    box.close()


def test_leftovers_of_a_killed_older_writer_are_listed_then_swept_on_the_next_write(tmp_path: Path) -> None:
    home = tmp_path / "box"
    home.mkdir()
    box = open_box(home)
    fs = box.features
    fs.apply([Entity("thing", {"tid": "int64"}), VIEW])
    fs.ingest("gens", _batch(1).head(10))
    fs.materialize("gens")
    table = table_name(fs.view("gens"))
    box.close()
    # what a --full run of an older mlbox left when killed: a committed half-built rebuild table, and a staging table
    db = Database(home / "online.db")
    db.execute(f'CREATE TABLE "{table}__rebuild" (tid INTEGER PRIMARY KEY)')
    db.execute(f'CREATE TABLE "{table}__stage" (tid INTEGER PRIMARY KEY)')
    assert leftover_tables(db) == [f"{table}__rebuild", f"{table}__stage"]
    box = open_box(home)
    assert box.features.online_leftovers() == [f"{table}__rebuild", f"{table}__stage"]  # reading reports, never drops
    assert box.features.get_online_features(["gens:gen"], [{"tid": 3}])["gen"] == [1]
    box.features.ingest("gens", _batch(2).head(10))
    box.features.materialize("gens")  # the first write of a process sweeps
    assert leftover_tables(db) == [] and box.features.online_leftovers() == []
    assert box.features.get_online_features(["gens:gen"], [{"tid": 3}])["gen"] == [2]
    box.close()
    db.execute(f'CREATE TABLE "{table}__rebuild" (tid INTEGER PRIMARY KEY)')
    box = open_box(home)  # a fresh process, as `mlbox doctor --repair` is
    assert box.features.sweep_online() == [f"{table}__rebuild"] and leftover_tables(db) == []
    box.close()
    db.close()
