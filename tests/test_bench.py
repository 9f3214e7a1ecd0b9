"""The benchmarks run end to end at small sizes and report every row against a measured floor."""

from __future__ import annotations

import pytest

from mlbox.bench import features, train


@pytest.mark.slow
def test_bench_features_quick() -> None:
    rows = features.run(features.QUICK)
    names = [r.name for r in rows]
    assert len(rows) == 5 and any("training set" in n for n in names) and any("materialize" in n for n in names)
    for r in rows:
        assert r.mlbox > 0
        if "materialize" not in r.name:
            assert r.floor and r.floor > 0 and r.ratio and r.ratio > 0


@pytest.mark.slow
def test_bench_train_quick() -> None:
    rows = train.run(train.QUICK)
    assert [r.unit for r in rows] == ["s", "s", "calls/s"]
    assert rows[0].floor and rows[0].ratio  # xgboost.train measured in the same run
    assert "max |diff|" in rows[1].name
    assert rows[2].mlbox > 1000 and rows[2].floor
