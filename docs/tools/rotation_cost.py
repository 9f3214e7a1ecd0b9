"""What `mlbox keys rotate` costs per byte: one 1M-row encrypted Parquet batch rewritten, one ~50 MB SQLCipher database rekeyed.

Run from a checkout: `.venv/bin/python docs/tools/rotation_cost.py`. It makes a throwaway encrypted box
folder in a temporary directory and prints the median of 3 runs of each of the two kinds of work a
rotation does (`mlbox.store.boxfiles.rewrite_parquet`, `mlbox.store.rotate.rekey_database`); the rest of a rotation is a
scan of the box that reads a few bytes per file, and one settling second.
"""

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from mlbox.store import crypt, keyring
from mlbox.store.boxfiles import rewrite_parquet
from mlbox.store.rotate import keyed_connection, rekey_database

ROWS = 1_000_000
root = Path(tempfile.mkdtemp())
try:
    home = root / "box"
    (home / "features").mkdir(parents=True)
    ring = keyring.create_keyring(home)
    rng = np.random.default_rng(0)
    table = pa.table({"id": np.arange(ROWS), "ts": np.arange(ROWS) * 1000, **{f"x{i}": rng.normal(size=ROWS) for i in range(4)}})
    batch = home / "features" / "batch.parquet"
    crypt.write_table(table, batch, compression="zstd")
    db = home / "online.db"
    conn = keyed_connection(db, ring.current_key()[1], 30000)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", ((i, bytes(40)) for i in range(ROWS)))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()

    parquet, sqlite = [], []
    for _ in range(3):
        ring.add_key()
        start = time.perf_counter()
        rewrite_parquet(batch)
        parquet.append(time.perf_counter() - start)
        start = time.perf_counter()
        rekey_database(db, ring, 30000)
        sqlite.append(time.perf_counter() - start)
        ring.retire([k for k in ring.ids if k != ring.current])
    mb_parquet, mb_db = batch.stat().st_size / 1e6, db.stat().st_size / 1e6
    p, s = statistics.median(parquet), statistics.median(sqlite)
    print("| work | size | seconds (median of 3) | MB/s |")
    print("|---|---|---|---|")
    print(f"| Parquet batch rewritten ({ROWS:,} rows, 6 columns, zstd) | {mb_parquet:.1f} MB | {p:.2f} | {mb_parquet / p:.0f} |")
    print(f"| SQLCipher database rekeyed ({ROWS:,} rows) | {mb_db:.1f} MB | {s:.2f} | {mb_db / s:.0f} |")
finally:
    shutil.rmtree(root, ignore_errors=True)
