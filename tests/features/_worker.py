"""Subprocess helper for the multi-process feature-store tests: `python _worker.py MODE ARGS...`.

writer HOME VIEW BATCHES ROWS OFFSET   ingest BATCHES batches of ROWS rows (new customer ids from OFFSET), pausing briefly
reader HOME VIEW LABELS READY DONE   until DONE exists: count rows via fs.sql and via a training set; prints JSON
ingest HOME VIEW PATH            one ingest of a file (killed mid-write by the crash test)
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

T0 = "2025-01-01T00:00:00Z"


def _box(home: str):  # type: ignore[no-untyped-def]
    from mlbox.box import Box
    from mlbox.config import load_settings

    return Box(load_settings(home))


def writer(home: str, view: str, batches: int, rows: int, offset: int) -> None:
    import numpy as np
    import pandas as pd

    box = _box(home)
    try:
        for i in range(batches):
            ids = np.arange(offset + i * rows, offset + (i + 1) * rows, dtype="int64")
            df = pd.DataFrame({"customer_id": ids, "ts": pd.Timestamp(T0) + pd.Timedelta(seconds=i), "a": ids * 2})
            box.features.ingest(view, df)
            time.sleep(0.05)
    finally:
        box.close()


def reader(home: str, view: str, labels: str, ready: str, done: str) -> None:
    seen: list[list[object]] = []
    errors: list[str] = []
    Path(ready).touch()
    last = False
    while not last:
        last = Path(done).exists()
        try:
            box = _box(home)  # a fresh open each round: its sweep runs while the writer is mid-ingest
            try:
                fs = box.features
                seen.append(["sql", fs.sql(f"SELECT count(*) FROM {view}")[1][0][0]])
                ts = fs.training_set(labels, [f"{view}:a"], timestamp="ts")
                seen.append(["training_set", int(ts.frame["a"].notna().sum()), len(ts.batches)])
                ok = bool((ts.frame["a"].dropna() == ts.frame.loc[ts.frame["a"].notna(), "customer_id"] * 2).all())
                if not ok:
                    errors.append("training set values do not match their keys")
            finally:
                box.close()
        except Exception:
            errors.append(traceback.format_exc())
    print(json.dumps({"seen": seen, "errors": errors}))


def ingest(home: str, view: str, path: str) -> None:
    box = _box(home)
    try:
        box.features.ingest(view, path)
    finally:
        box.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "writer":
        writer(args[0], args[1], int(args[2]), int(args[3]), int(args[4]))
    elif mode == "reader":
        reader(*args)
    elif mode == "ingest":
        ingest(*args)
    else:
        raise SystemExit(f"unknown mode {mode}")
