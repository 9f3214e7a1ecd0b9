"""What masking costs `features sql`: the same queries on 1M rows, raw (features.read_pii) and masked.

Run from a checkout: `.venv/bin/python docs/tools/masked_sql_cost.py`. It makes a throwaway box in a
temporary folder, ingests 1M rows of a view with one pii field, and prints a Markdown table: each query's
median of 3 runs, raw and masked, and their ratio. Masked reads go through an Arrow dataset without the
protected column (mlbox/features/privacy.py) instead of DuckDB's own Parquet reader.
"""
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import mlbox
from mlbox import Entity, FeatureView, Field

root = Path(tempfile.mkdtemp())
box = mlbox.init(str(root / "p"), template="tabular-classification")
fs = box.features
fs.apply([Entity("cust", {"cid": "int64"}),
          FeatureView("people", "cust", "ts", (Field("plan", "string"), Field("spend", "float64"),
                                                Field("email", "string", pii=True)))], box.actor)
n = 1_000_000
rng = np.random.default_rng(0)
frame = pd.DataFrame({"cid": np.arange(n), "ts": pd.Timestamp("2026-01-01", tz="UTC"),
                      "plan": rng.choice(["basic", "plus", "pro"], n), "spend": rng.random(n),
                      "email": [f"user{i}@example.ae" for i in range(n)]})
fs.ingest("people", frame, box.actor)
queries = {"count/avg": "SELECT count(*), avg(spend) FROM people",
           "WHERE cid%1000=0": "SELECT * FROM people WHERE cid % 1000 = 0",
           "GROUP BY plan": "SELECT plan, count(*) FROM people GROUP BY plan",
           "SELECT * (1M rows)": "SELECT * FROM people"}
print("| query | raw | masked | ratio |\n|---|---|---|---|")
for name, q in queries.items():
    out = {}
    for mode in ("raw", "mask"):
        times = []
        for _ in range(3):
            t = time.perf_counter(); fs.sql(q, protected=mode); times.append(time.perf_counter() - t)
        out[mode] = statistics.median(times)
    print(f"| {name} | {out['raw']*1e3:.0f} ms | {out['mask']*1e3:.0f} ms | {out['mask']/out['raw']:.2f}x |")
box.close()
shutil.rmtree(root)
