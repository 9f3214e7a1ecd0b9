"""Batch statistics from one read of the written batch: exact counts, range and moments, quantiles.

Checked against numpy on the same values, including the cases the fast path must hand to
the exact one (inf, NaN) and a large-mean column where naive sums of squares would cancel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlbox.features import stats
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.store import FeatureStore

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})
FIELDS = (
    Field("x", "float64"),
    Field("big", "float64"),
    Field("odd", "float64"),
    Field("n", "int64"),
    Field("s", "string"),
    Field("b", "bool"),
    Field("t", "timestamp"),
)


def _frame(rows: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    odd = rng.normal(size=rows)
    odd[:3] = [np.inf, -np.inf, np.nan]
    n = pd.array(rng.integers(-50, 50, size=rows), dtype="Int64")
    n[5] = pd.NA
    return pd.DataFrame(
        {
            "customer_id": np.arange(rows),
            "ts": T0 + pd.to_timedelta(np.arange(rows), unit="s"),
            "x": np.where(np.arange(rows) % 10 == 0, np.nan, rng.random(rows)),  # NaN stays NaN through Arrow
            "big": 1e9 + rng.normal(scale=0.001, size=rows),
            "odd": odd,
            "n": n,
            "s": rng.choice(["a", "b", "c"], size=rows, p=[0.6, 0.3, 0.1]),
            "b": rng.random(rows) < 0.25,
            "t": T0 + pd.to_timedelta(rng.integers(0, 10_000, size=rows), unit="min"),
        }
    )


def _finite(values: pd.Series) -> np.ndarray:
    v = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    return v[np.isfinite(v)]


@pytest.mark.parametrize("rows", [5_000, stats.EXACT_QUANTILE_ROWS + 40_000])
def test_stats_match_numpy(fs: FeatureStore, rows: int) -> None:
    fs.apply([CUSTOMER, FeatureView("v", "customer", "ts", FIELDS)])
    frame = _frame(rows)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name in ("x", "odd"):  # keep NaN as NaN (from_pandas would make it null)
        table = table.set_column(table.column_names.index(name), name, pa.array(frame[name].to_numpy(), from_pandas=False))
    batch = fs.ingest("v", table).batch
    got = batch.stats
    assert got["rows"] == batch.row_count == rows
    assert got["ts_min"] == T0.isoformat() and got["ts_max"] == (T0 + pd.Timedelta(seconds=rows - 1)).isoformat()
    for name, nulls, non_finite in (("x", 0, (rows + 9) // 10), ("big", 0, 0), ("odd", 0, 3), ("n", 1, 0)):
        s = got["fields"][name]
        finite = _finite(frame[name])
        assert (s["count"], s["nulls"], s["non_finite"]) == (rows - nulls, nulls, non_finite), name
        assert s["min"] == pytest.approx(finite.min(), rel=1e-12) and s["max"] == pytest.approx(finite.max(), rel=1e-12)
        assert s["mean"] == pytest.approx(finite.mean(), rel=1e-9)
        assert s["std"] == pytest.approx(finite.std(ddof=1), rel=1e-6)  # the large-mean column too
        expected_q = np.quantile(finite, stats.QUANTILES)
        tolerance = 1e-9 if rows <= stats.EXACT_QUANTILE_ROWS else 0.05 * (np.quantile(finite, 0.99) - np.quantile(finite, 0.01))
        for p, q in zip(stats.QUANTILES, expected_q, strict=True):
            assert abs(s["quantiles"][str(p)] - q) <= tolerance + 1e-9 * abs(q), (name, p)
    top = dict(got["fields"]["s"]["top"])
    assert top == frame["s"].value_counts().to_dict() and got["fields"]["s"]["distinct"] == 3
    assert dict(got["fields"]["b"]["top"]) == {str(k).lower(): int(v) for k, v in frame["b"].value_counts().items()}
    t = got["fields"]["t"]
    assert (t["min"], t["max"]) == (frame["t"].min().isoformat(), frame["t"].max().isoformat())


def test_all_null_column(fs: FeatureStore) -> None:
    fs.apply([CUSTOMER, FeatureView("w", "customer", "ts", (Field("x", "float64"),))])
    batch = fs.ingest("w", pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0], "x": [None, None]}).astype({"x": "float64"})).batch
    s = batch.stats["fields"]["x"]
    assert s["count"] == 0 and s["nulls"] == 2 and s["min"] is None and s["mean"] is None and s["std"] is None
