"""Drift statistics: the exact functions equal scipy, the profile path is within its stated precision, edge cases give a status."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from mlbox.errors import UsageError
from mlbox.monitor import stats
from mlbox.flavors.profile import categorical_entry, numeric_entry
from mlbox.monitor.verdict import CATEGORICAL_DEFAULTS, NUMERIC_DEFAULTS, FeatureDrift, FeatureThresholds

SIZES = [(1, 1), (7, 13), (200, 150), (3000, 3000), (12_000, 20_000)]


def _samples(rng: np.random.Generator, n1: int, n2: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "continuous":
        return rng.normal(size=n1), rng.normal(0.1, 1.3, size=n2)
    if kind == "ties":  # rounded values: many ties inside and across the samples
        return np.round(rng.normal(size=n1), 1), np.round(rng.normal(0.2, size=n2), 1)
    return rng.integers(0, 6, n1).astype(float), rng.poisson(2.5, n2).astype(float)  # discrete


@pytest.mark.parametrize("kind", ["continuous", "ties", "discrete"])
@pytest.mark.parametrize(("n1", "n2"), SIZES)
def test_ks_and_wasserstein_equal_scipy(n1: int, n2: int, kind: str) -> None:
    a, b = _samples(np.random.default_rng(n1 + n2), n1, n2, kind)
    d, p = stats.ks_2samp(a, b)
    expected = sps.ks_2samp(a, b)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, abs=1e-6)
    assert stats.wasserstein(a, b) == pytest.approx(sps.wasserstein_distance(a, b), abs=1e-9)


def test_ks_pvalue_is_scipys_asymptotic_formula() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=500), rng.normal(0.15, size=800)
    d, _ = stats.ks_2samp(a, b)
    assert stats.ks_pvalue(d, 500, 800) == pytest.approx(sps.ks_2samp(a, b, method="asymp").pvalue, abs=1e-9)


@pytest.mark.parametrize("k", [2, 3, 8, 40])
@pytest.mark.parametrize("scale", [5, 1000, 100_000])
def test_chi2_homogeneity_equals_chi2_contingency(k: int, scale: int) -> None:
    rng = np.random.default_rng(k * scale)
    ref, cur = rng.integers(1, scale, k), rng.integers(1, scale, k)
    stat, p, dof = stats.chi2_homogeneity(ref, cur)
    expected = sps.chi2_contingency(np.vstack([ref, cur]))
    assert (stat, dof) == (pytest.approx(expected.statistic, rel=1e-9), expected.dof)
    assert p == pytest.approx(expected.pvalue, abs=1e-6)


def test_chi2_homogeneity_drops_empty_columns_and_handles_degenerate_tables() -> None:
    ref, cur = np.array([10, 0, 30, 5]), np.array([12, 0, 20, 0])
    stat, p, dof = stats.chi2_homogeneity(ref, cur)
    expected = sps.chi2_contingency(np.vstack([[10, 30, 5], [12, 20, 0]]))
    assert (stat, p, dof) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue), 2)
    assert stats.chi2_homogeneity([5, 0], [9, 0]) == (0.0, 1.0, 0)  # one level: nothing to test
    stat, p, _ = stats.chi2_homogeneity([5, 3], [0, 0])  # empty current row: undefined, not an exception
    assert math.isnan(stat) and math.isnan(p)


@pytest.mark.parametrize("k", [2, 5, 30])
def test_js_distance_equals_scipy_base_2(k: int) -> None:
    rng = np.random.default_rng(k)
    p, q = rng.integers(0, 100, k), rng.integers(1, 100, k)
    assert stats.js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    assert stats.js_distance(p, p) == 0.0
    assert stats.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint supports: the maximum in base 2


def test_psi_is_the_textbook_formula_with_epsilon_for_empty_bins() -> None:
    ref, cur = np.array([20, 30, 50]), np.array([30, 30, 40])
    by_hand = (0.3 - 0.2) * math.log(0.3 / 0.2) + 0.0 + (0.4 - 0.5) * math.log(0.4 / 0.5)
    assert stats.psi(ref, cur) == pytest.approx(by_hand, abs=1e-12)
    eps = stats.PSI_EPS
    assert stats.psi([50, 50], [100, 0]) == pytest.approx((1 - 0.5) * math.log(2) + (eps - 0.5) * math.log(eps / 0.5))
    assert stats.psi(ref, ref) == 0.0


def test_exact_functions_refuse_empty_samples() -> None:
    with pytest.raises(UsageError):
        stats.ks_2samp([], [1.0])
    with pytest.raises(UsageError):
        stats.wasserstein([1.0], [])


# -- the profile path ------------------------------------------------------------------------------

RAW = FeatureThresholds(alpha=0.5, min_rows=1)


@pytest.mark.parametrize("kind", ["ties", "discrete"])
def test_profile_path_is_exact_when_the_grid_holds_every_reference_value(kind: str) -> None:
    a, b = _samples(np.random.default_rng(7), 20_000, 5_000, kind)
    entry = numeric_entry(a)
    assert len(entry["grid"]) == len(np.unique(a)) <= 1001
    got = stats.compare("x", entry, b, RAW)
    assert got.ks_statistic == pytest.approx(sps.ks_2samp(a, b).statistic, abs=1e-12)
    assert got.ks_p_value == pytest.approx(stats.ks_pvalue(got.ks_statistic, a.size, b.size), abs=1e-12)
    assert got.wasserstein == pytest.approx(sps.wasserstein_distance(a, b) / a.std(), abs=1e-9)


DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.normal(size=n),
    "uniform": lambda rng, n: rng.uniform(size=n),
    "exponential": lambda rng, n: rng.exponential(size=n),
    "lognormal": lambda rng, n: rng.lognormal(sigma=0.5, size=n),
}


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
def test_profile_path_on_a_quantile_grid_is_within_the_stated_precision(dist: str, shift: float) -> None:
    rng = np.random.default_rng(len(dist))
    a = DISTRIBUTIONS[dist](rng, 100_000)
    b = DISTRIBUTIONS[dist](rng, 50_000) + shift * a.std()
    entry = numeric_entry(a)
    assert len(entry["grid"]) == 1001
    got = stats.compare("x", entry, b, RAW)
    d = sps.ks_2samp(a, b).statistic
    assert abs(got.ks_statistic - d) <= 1e-3  # docs: D within one grid step (1/1000), ~1e-4 in practice
    assert abs(got.wasserstein - sps.wasserstein_distance(a, b) / a.std()) <= 2e-3  # docs: within 0.002 sd here


def test_profile_bins_give_psi_js_and_chi2_of_the_decile_counts() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=10_000), rng.normal(0.3, size=4_000)
    entry = numeric_entry(a)
    cur = np.histogram(b, bins=[-np.inf, *entry["edges"], np.inf])[0]  # right-open bins; continuous data has no ties at edges
    got = stats.compare("x", entry, b, RAW)
    assert got.psi == pytest.approx(stats.psi(entry["counts"], cur))
    assert got.js == pytest.approx(jensenshannon(entry["counts"], cur, base=2))
    assert got.chi2_statistic == pytest.approx(sps.chi2_contingency(np.vstack([entry["counts"], cur])).statistic)
    assert got.histogram is not None and got.histogram.bins[0].startswith("≤ ") and got.histogram.bins[-1].startswith("> ")
    assert sum(got.histogram.current) == pytest.approx(1.0)


def test_compare_on_a_million_rows_is_fast() -> None:
    rng = np.random.default_rng(1)
    entry = numeric_entry(rng.normal(size=100_000))
    current = rng.normal(size=1_000_000)
    stats.compare("x", entry, current, NUMERIC_DEFAULTS)  # warm-up (scipy's distribution objects)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        stats.compare("x", entry, current, NUMERIC_DEFAULTS)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.1, timings  # ~15 ms on the idle dev machine, ~45 ms under load; per-row Python would take seconds


# -- verdicts and edge cases -------------------------------------------------------------------------


def test_numeric_drift_needs_significance_and_an_effect() -> None:
    rng = np.random.default_rng(2)
    entry = numeric_entry(rng.normal(size=100_000))
    shifted = stats.compare("x", entry, rng.normal(0.2, size=10_000), NUMERIC_DEFAULTS)
    assert shifted.status == "drift" and shifted.drifted and "Wasserstein/sd" in shifted.reason
    tiny = stats.compare("x", entry, rng.normal(0.03, size=1_000_000), NUMERIC_DEFAULTS)
    assert tiny.ks_p_value is not None and tiny.ks_p_value < 0.01  # significant at this size ...
    assert tiny.status == "ok" and "small" in tiny.reason  # ... but below the effect floors
    same = stats.compare("x", entry, rng.normal(size=10_000), NUMERIC_DEFAULTS)
    assert same.status == "ok" and "no significant change" in same.reason


def test_numeric_edge_cases_give_a_status_never_an_exception() -> None:
    rng = np.random.default_rng(4)
    entry = numeric_entry(rng.normal(size=1000))
    empty = stats.compare("x", entry, np.empty(0), NUMERIC_DEFAULTS)
    assert (empty.status, empty.rows, empty.drifted) == ("empty", 0, False)
    nulls = stats.compare("x", entry, np.full(50, np.nan), NUMERIC_DEFAULTS)
    assert nulls.status == "insufficient" and nulls.null_rate == 1.0 and "null" in nulls.reason
    one = stats.compare("x", entry, np.array([0.5]), NUMERIC_DEFAULTS)
    assert one.status == "insufficient" and one.ks_statistic is not None and "min_rows" in one.reason
    mixed = stats.compare("x", entry, np.array([np.nan, np.inf, -np.inf, *rng.normal(size=997)]), NUMERIC_DEFAULTS)
    assert mixed.null_rate == pytest.approx(0.003) and mixed.status == "ok"
    wide = stats.compare("x", entry, np.concatenate([rng.uniform(-1, 1, 900), np.full(100, 50.0)]), NUMERIC_DEFAULTS)
    assert wide.out_of_range_rate == pytest.approx(0.1) and wide.status == "drift"
    no_ref = stats.compare("x", numeric_entry(np.full(10, np.nan)), rng.normal(size=500), NUMERIC_DEFAULTS)
    assert no_ref.status == "insufficient" and "reference" in no_ref.reason
    wrong = stats.compare("x", entry, {"a": 3}, NUMERIC_DEFAULTS)
    assert wrong.status == "insufficient"
    for result in (empty, nulls, one, mixed, wide, no_ref, wrong):
        json.dumps(result.as_dict(), allow_nan=False)


def test_a_constant_feature() -> None:
    entry = numeric_entry(np.full(5000, 3.0))
    assert entry["std"] == 0.0 and entry["edges"] == [] and entry["grid"] == [3.0]
    same = stats.compare("x", entry, np.full(2000, 3.0), NUMERIC_DEFAULTS)
    assert same.status == "ok" and same.wasserstein is None and same.ks_statistic == 0.0
    moved = stats.compare("x", entry, np.concatenate([np.full(1700, 3.0), np.full(300, 4.0)]), NUMERIC_DEFAULTS)
    assert moved.status == "drift" and moved.ks_statistic == pytest.approx(0.15) and moved.out_of_range_rate == pytest.approx(0.15)
    assert moved.histogram is not None and moved.histogram.bins == ("all values",)
    json.dumps(moved.as_dict(), allow_nan=False)


def test_categorical_compare_with_unseen_levels_and_nulls() -> None:
    entry = categorical_entry({"a": 5000, "b": 3000, "c": 2000, None: 100})
    same = stats.compare("x", entry, {"a": 500, "b": 300, "c": 200}, CATEGORICAL_DEFAULTS)
    assert same.status == "ok" and same.unseen_rate == 0.0 and same.chi2_p_value == pytest.approx(1.0)
    new = stats.compare("x", entry, {"a": 400, "b": 300, "c": 150, "zz": 100, "yy": 50, None: 250}, CATEGORICAL_DEFAULTS)
    assert new.status == "drift" and new.unseen_rate == pytest.approx(0.15) and new.null_rate == pytest.approx(0.2)
    assert new.histogram is not None and new.histogram.bins == ("a", "b", "c", stats.UNSEEN)
    expected = sps.chi2_contingency(np.array([[5000, 3000, 2000, 0], [400, 300, 150, 150]]))
    assert new.chi2_statistic == pytest.approx(expected.statistic) and new.chi2_dof == 3
    assert new.js == pytest.approx(jensenshannon([5000, 3000, 2000, 0], [400, 300, 150, 150], base=2))
    assert set(new.as_dict()["tests"]) == {"psi", "chi2", "js"}  # no KS/Wasserstein on categories
    assert stats.compare("x", entry, {}, CATEGORICAL_DEFAULTS).status == "empty"
    assert stats.compare("x", entry, {None: 40}, CATEGORICAL_DEFAULTS).status == "insufficient"
    assert stats.compare("x", entry, np.zeros(3), CATEGORICAL_DEFAULTS).status == "insufficient"
    assert stats.compare("x", {"kind": "text"}, {}, CATEGORICAL_DEFAULTS).status == "insufficient"


def test_feature_drift_as_dict_has_the_check_result_shape() -> None:
    rng = np.random.default_rng(8)
    got = stats.compare("age", numeric_entry(rng.normal(size=5000)), rng.normal(1.0, size=800), NUMERIC_DEFAULTS).as_dict()
    assert set(got) == {"name", "kind", "status", "drifted", "rows", "null_rate", "out_of_range_rate", "unseen_rate",
                        "reason", "tests", "histogram"}  # fmt: skip
    assert set(got["tests"]) == {"psi", "ks", "chi2", "js", "wasserstein"}
    assert set(got["tests"]["ks"]) == {"statistic", "p_value"} and set(got["tests"]["chi2"]) == {"statistic", "p_value", "dof"}
    assert len(got["histogram"]["bins"]) == len(got["histogram"]["reference"]) == len(got["histogram"]["current"]) == 10
    assert got["name"] == "age" and got["drifted"] is True and got["unseen_rate"] is None
    json.dumps(got, allow_nan=False)


def test_ignored_feature_is_measured_but_not_counted() -> None:
    rng = np.random.default_rng(9)
    th = FeatureThresholds(alpha=0.01, wasserstein=0.1, ignore=True)
    got = stats.compare("x", numeric_entry(rng.normal(size=5000)), rng.normal(2.0, size=800), th)
    assert got.status == "ok" and got.ignored and not got.counted and got.reason.startswith("ignored")


def _fd(name: str, status: str) -> FeatureDrift:
    return FeatureDrift(name=name, kind="numeric", status=status, rows=100, reason="")  # type: ignore[arg-type]


def test_dataset_verdict_share_weights_and_uncounted_features() -> None:
    features = [_fd("a", "drift"), _fd("b", "ok"), _fd("c", "ok"), _fd("d", "ok"), _fd("e", "insufficient"), _fd("f", "empty")]
    plain = stats.dataset_verdict(features, None, 0.25)
    assert (plain.share, plain.weighted_share, plain.counted, plain.drifted) == (0.25, 0.25, 4, True)
    assert plain.drifted_features == ("a",) and "1 of 4" in plain.reason
    weighted = stats.dataset_verdict(features, {"a": 0.05, "b": 0.5, "c": 0.3, "d": 0.15, "e": 10.0}, 0.25)
    assert weighted.weighted and weighted.weighted_share == pytest.approx(0.05) and not weighted.drifted
    heavy = stats.dataset_verdict(features, {"a": 0.9, "b": 0.1}, 0.5)
    assert heavy.drifted and heavy.weighted_share == pytest.approx(0.9) and heavy.share == 0.25
    unusable = stats.dataset_verdict(features, {"zz": 1.0}, 0.25)  # no weight on any counted feature: plain share
    assert not unusable.weighted and unusable.drifted
    nothing = stats.dataset_verdict([_fd("e", "insufficient")], None, 0.25)
    assert not nothing.drifted and nothing.counted == 0 and nothing.share == 0.0
    json.dumps(plain.as_dict())


@pytest.mark.parametrize("n1, n2", [(100_000, 100_000), (1_000_000, 900_000), (1_000_000, 100_000)])
def test_fast_ks_pvalue_is_within_its_stated_error_of_scipy(n1: int, n2: int) -> None:
    from scipy import special
    from scipy import stats as sps

    from mlbox.monitor.stats import ks_pvalue_fast

    en = n1 * n2 / (n1 + n2)
    for p, tolerance in ((0.5, 1e-3), (0.05, 1e-3), (0.01, 1e-3), (1e-4, 5e-3)):
        d = float(special.kolmogi(p)) / en**0.5
        exact = float(sps.kstwo.sf(d, round(en)))
        assert abs(ks_pvalue_fast(d, n1, n2) - exact) <= tolerance * exact
    assert ks_pvalue_fast(0.01, 2000, 3000) == pytest.approx(float(sps.kstwo.sf(0.01, 1200)), rel=1e-12)  # small: scipy's
