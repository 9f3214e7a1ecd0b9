"""The default thresholds on a synthetic 50-column set with known shifts: every shifted column found, no false alarm."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlbox.errors import UsageError
from mlbox.flavors.signature import Column, Signature
from mlbox.monitor.calibrate import mix_change
from mlbox.flavors.profile import build_profile
from mlbox.monitor.stats import compare, dataset_verdict
from mlbox.monitor.verdict import CATEGORICAL_DEFAULTS, NUMERIC_DEFAULTS, FeatureThresholds, Thresholds

REFERENCE_ROWS = 100_000
SHIFTED_NUMERIC = {f"n{i}" for i in range(0, 40, 4)}  # 10 of 40 numeric columns move by +0.2 sd
CHANGED_MIX = {"c1": 0.05, "c4": 0.05, "c6": 0.08, "c9": 0.10}  # 4 of 10 categorical mixes, by TV distance


def _numeric(rng: np.random.Generator, i: int, n: int, shifted: bool) -> np.ndarray:
    """Column i's values: six shapes (normal, lognormal, uniform, Poisson counts, exponential, bimodal)."""
    shape = i % 6
    if shape == 0:
        mu, sd = 50.0 + i, 5.0 + i / 4
        return rng.normal(mu + (0.2 * sd if shifted else 0.0), sd, n)
    if shape == 1:
        sd = float(np.sqrt((np.exp(0.36) - 1) * np.exp(0.36)))
        return rng.lognormal(0.0, 0.6, n) + (0.2 * sd if shifted else 0.0)
    if shape == 2:
        return rng.uniform(-3.0, 7.0, n) + (0.2 * 10 / np.sqrt(12) if shifted else 0.0)
    if shape == 3:  # integer counts: the mean moves by 0.2 sd, the values stay integers
        lam = 4.0
        return rng.poisson(lam + (0.2 * np.sqrt(lam) if shifted else 0.0), n).astype(np.float64)
    if shape == 4:
        return rng.exponential(2.0, n) + (0.2 * 2.0 if shifted else 0.0)
    mixture = np.where(rng.random(n) < 0.4, rng.normal(-2.0, 0.5, n), rng.normal(3.0, 1.0, n))
    sd = float(np.sqrt(0.4 * 0.25 + 0.6 * 1.0 + 0.4 * 0.6 * 25.0))
    return mixture + (0.2 * sd if shifted else 0.0)


def _mixes(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per categorical column: (reference probabilities, current probabilities), 5 to 20 levels."""
    out = {}
    for j in range(10):
        k = 5 + (j * 15) // 9
        p = rng.dirichlet(np.full(k, 2.0))
        out[f"c{j}"] = (p, mix_change(rng, p, CHANGED_MIX[f"c{j}"]) if f"c{j}" in CHANGED_MIX else p)
    return out


def _reference() -> tuple[dict[str, object], dict[str, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(20261201)
    mixes = _mixes(rng)
    columns = [Column(f"n{i}", "numeric", "float64") for i in range(40)]
    columns += [Column(name, "categorical", "string", tuple(f"{name}_l{v}" for v in range(p.size))) for name, (p, _) in mixes.items()]
    sig = Signature(tuple(columns), "regression", "y")
    X = np.empty((REFERENCE_ROWS, 50), dtype=np.float32)  # the encoded matrix a model trains on
    for i in range(40):
        X[:, i] = _numeric(rng, i, REFERENCE_ROWS, shifted=False)
    for j, (p, _) in enumerate(mixes.values()):
        X[:, 40 + j] = rng.choice(p.size, size=REFERENCE_ROWS, p=p)
    return build_profile(X, sig, task="regression"), mixes


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, object], dict[str, tuple[np.ndarray, np.ndarray]]]:
    return _reference()


def _check(reference: tuple[dict[str, object], dict[str, tuple[np.ndarray, np.ndarray]]], rows: int, seed: int) -> set[str]:
    profile, mixes = reference
    rng = np.random.default_rng(seed)
    thresholds = Thresholds()
    results = []
    for name, entry in profile["features"].items():  # type: ignore[attr-defined]
        if entry["kind"] == "numeric":
            i = int(name[1:])
            # float32 like the prediction log's x.<feature> columns, read back as float64
            current: object = _numeric(rng, i, rows, shifted=name in SHIFTED_NUMERIC).astype(np.float32).astype(np.float64)
        else:
            q = mixes[name][1]
            current = {f"{name}_l{v}": int(c) for v, c in enumerate(rng.multinomial(rows, q))}
        results.append(compare(name, entry, current, thresholds.for_feature(name, entry["kind"])))
    assert all(r.status in ("ok", "drift") for r in results)
    verdict = dataset_verdict(results, None, thresholds.dataset_share)
    flagged = {r.name for r in results if r.drifted}
    assert verdict.drifted == (len(flagged) / 50 >= thresholds.dataset_share)
    return flagged


def test_defaults_at_10k_rows(reference: tuple[dict[str, object], dict[str, tuple[np.ndarray, np.ndarray]]]) -> None:
    assert _check(reference, 10_000, seed=1) == SHIFTED_NUMERIC | set(CHANGED_MIX)


@pytest.mark.slow
def test_defaults_at_1m_rows(reference: tuple[dict[str, object], dict[str, tuple[np.ndarray, np.ndarray]]]) -> None:
    assert _check(reference, 1_000_000, seed=2) == SHIFTED_NUMERIC | set(CHANGED_MIX)


def test_defaults_raise_no_alarm_on_unchanged_windows(reference: tuple[dict[str, object], dict[str, tuple[np.ndarray, np.ndarray]]]) -> None:
    profile, mixes = reference
    rng = np.random.default_rng(3)
    thresholds = Thresholds()
    for name, entry in profile["features"].items():  # type: ignore[attr-defined]
        if entry["kind"] == "numeric":
            current: object = _numeric(rng, int(name[1:]), 10_000, shifted=False).astype(np.float32).astype(np.float64)
        else:
            current = {f"{name}_l{v}": int(c) for v, c in enumerate(rng.multinomial(10_000, mixes[name][0]))}
        result = compare(name, entry, current, thresholds.for_feature(name, entry["kind"]))
        assert result.status == "ok", (name, result.reason)


# -- the thresholds themselves -------------------------------------------------------------------


def test_thresholds_defaults_overrides_and_round_trip() -> None:
    th = Thresholds()
    assert th.for_feature("x", "numeric") == NUMERIC_DEFAULTS and th.for_feature("x", "categorical") == CATEGORICAL_DEFAULTS
    assert (NUMERIC_DEFAULTS.alpha, NUMERIC_DEFAULTS.wasserstein, NUMERIC_DEFAULTS.ks) == (0.01, 0.1, 0.1)
    assert (CATEGORICAL_DEFAULTS.alpha, CATEGORICAL_DEFAULTS.js, th.dataset_share) == (0.01, 0.03, 0.25)
    custom = Thresholds.from_dict(
        {"numeric": {"alpha": 0.001}, "features": {"amount": {"wasserstein": None, "ks": 0.05}, "plan": {"ignore": True}},
         "dataset_share": 0.5}
    )  # fmt: skip
    amount = custom.for_feature("amount", "numeric")
    assert (amount.alpha, amount.wasserstein, amount.ks) == (0.001, None, 0.05)  # kind default, then the override
    assert custom.for_feature("plan", "categorical").ignore and custom.for_feature("plan", "categorical").js == 0.03
    assert custom.for_feature("other", "numeric").wasserstein == 0.1
    assert Thresholds.from_dict(custom.as_dict()) == custom
    json.dumps(custom.as_dict())
    assert Thresholds.from_dict({}) == Thresholds()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"numerc": {}}, "unknown key 'numerc'"),
        ({"numeric": {"alpah": 0.1}}, "unknown key 'alpah'"),
        ({"numeric": {"alpha": 1.5}}, "alpha must be a number between 0 and 1"),
        ({"categorical": {"js": -0.1}}, "js must be a non-negative number"),
        ({"numeric": {"min_rows": True}}, "min_rows must be a whole number"),
        ({"features": {"a": {"ignore": "yes"}}}, "ignore must be true or false"),
        ({"features": {"a": {"wass": 1}}}, "unknown key 'wass'"),
        ({"features": ["a"]}, "features must map"),
        ({"dataset_share": 0}, "dataset_share must be a number in (0, 1]"),
        ("numeric", "expected a mapping"),
    ],
)
def test_thresholds_refuse_bad_input_with_a_clear_message(data: object, message: str) -> None:
    with pytest.raises(UsageError) as err:
        Thresholds.from_dict(data)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_feature_thresholds_validate_on_construction() -> None:
    with pytest.raises(UsageError):
        FeatureThresholds(alpha=0.0)
    assert FeatureThresholds.from_dict({"js": 0.2}, base=CATEGORICAL_DEFAULTS).as_dict() == {**CATEGORICAL_DEFAULTS.as_dict(), "js": 0.2}
