"""`mlbox bench monitor` end to end at a tiny size: real models, a real log, the check and its floor in fresh processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mlbox.bench import monitor
from mlbox.bench.monitor_data import CATEGORICAL_SHIFTS, LEVELS, NUMERIC_SHIFTED, mix, synthesize
from mlbox.bench.monitor_floor import categorical, numeric
from mlbox.cli.main import app


def test_the_synthetic_shifts_are_the_ones_named() -> None:
    data = synthesize(20_000, seed=3)
    ref, cur = data.reference, data.current
    sd = np.nanstd(ref.numeric, axis=1)
    moved = (np.nanmean(cur.numeric, axis=1) - np.nanmean(ref.numeric, axis=1)) / sd
    shifted = [j for j, name in enumerate(data.names[: len(moved)]) if name in NUMERIC_SHIFTED]
    assert np.all(np.abs(moved[shifted] - 0.2) < 0.05), moved[shifted]
    assert np.all(np.abs(np.delete(moved, shifted)) < 0.05)
    for k, levels in enumerate(LEVELS):
        tv = 0.5 * np.abs(mix(levels, CATEGORICAL_SHIFTS.get(f"c{k:02d}", 0.0)) - mix(levels)).sum()
        assert tv == pytest.approx(CATEGORICAL_SHIFTS.get(f"c{k:02d}", 0.0))
    rows = data.current_rows(0, 3)
    assert len(rows) == 3 and list(rows[0]) == data.names
    assert isinstance(rows[0]["c00"], str) and rows[0]["c00"].startswith("c00_")
    # nulls are sent as None, and encoded as NaN for the model
    nulls = np.isnan(cur.numeric[data.names.index("n38")])
    assert 0.005 < nulls.mean() < 0.05
    assert np.isnan(cur.encoded()[nulls, data.names.index("n38")]).all()


def test_floor_statistics_are_scipy_on_the_raw_values() -> None:
    from scipy.stats import chi2_contingency, ks_2samp

    rng = np.random.default_rng(0)
    ref, cur = rng.normal(0, 1, 4000), rng.normal(0.3, 1, 3000)
    cur[:10] = np.nan
    tests = numeric(ref, cur)
    assert tests["ks.statistic"] == pytest.approx(ks_2samp(ref, cur[10:]).statistic)
    assert tests["wasserstein.value"] == pytest.approx(0.3, abs=0.06)
    assert tests["chi2.dof"] == 9 and tests["psi.value"] > 0.05
    codes = categorical(np.array([0, 1, 1, 2.0]), np.array([0, 0, 1, np.nan]), 4)  # level 3 never seen: left out of chi²
    assert codes["chi2.dof"] == 2
    assert codes["chi2.statistic"] == pytest.approx(chi2_contingency([[1, 2, 1], [2, 1, 0]]).statistic)
    assert numeric(np.array([np.nan]), cur) == {}  # an all-null reference: no tests, no crash


@pytest.mark.slow
def test_bench_monitor_through_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "QUICK", monitor.MonitorScale(10_000, 1))
    result = CliRunner().invoke(app, ["--json", "bench", "monitor", "--quick"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    check, rss = rows[0], rows[1]
    shape = "10,000 logged rows x 50 features + 2 outputs, 2 variants"
    assert check["name"].startswith(f"drift check, every test on every column: {shape}"), check["name"]
    assert check["unit"] == "s" and 0 < check["mlbox"] and check["floor"] > 0 and check["ratio"] > 0
    assert rss["unit"] == "GiB" and 0 < rss["mlbox"] < 2 and 0 < rss["floor"] < 2
    phases = [r for r in rows if r["name"].startswith("  where the check's time goes")]
    assert len(phases) == 2 and 0 < sum(r["mlbox"] for r in phases) <= check["mlbox"]  # reading the log, the statistics
    primary = next(r for r in rows if r["name"].startswith("drift found (primary"))
    assert primary["ok"], primary["name"]  # every shifted feature found, no unchanged one flagged
    assert primary["mlbox"] == len(NUMERIC_SHIFTED) + len(CATEGORICAL_SHIFTS)
    assert any(r["name"].startswith("drift found (canary") for r in rows)
    binned, sketched = (r for r in rows if r["name"].startswith("agreement"))
    assert binned["ok"] and binned["mlbox"] <= 1e-6, binned["name"]  # PSI, JS, chi²: the floor's, on the same bins
    assert sketched["mlbox"] < 0.01, sketched["name"]  # KS and Wasserstein: within the profile's quantile grid
    context = [r for r in rows if "not measured here" in r["name"]]
    assert len(context) == 2 and all(r["floor"] is None for r in context)  # the 1M-row figures: no ratio at 5k
    log = rows[-1]
    assert log["unit"] == "records" and log["mlbox"] == 10_000
