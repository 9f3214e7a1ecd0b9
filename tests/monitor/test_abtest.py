"""The A/B verdict: clear wins and losses, no difference at large n, 'not enough labels' with a sensible N, and a
bootstrap interval whose coverage is right in a seeded simulation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, log_loss

from mlbox.errors import UsageError
from mlbox.monitor.abtest import MIN_LABELLED, ab_verdict
from mlbox.monitor.quality import labelled_rows, quality

from ._quality_logs import Rec, labelled_frame, probs, regression_frame, write_labels, write_log

CLASSES = ["no", "yes"]


def ab_frame(seed: int, n_primary: int, acc_primary: float, n_canary: int, acc_canary: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat(
        [
            labelled_frame(rng, n_primary, acc_primary, variant="primary", model="m:1"),
            labelled_frame(rng, n_canary, acc_canary, variant="canary", model="m:2"),
        ],
        ignore_index=True,
    )


def test_a_clearly_better_or_worse_canary_gets_that_verdict() -> None:
    better = ab_verdict(ab_frame(0, 2000, 0.70, 2000, 0.85), "classification", CLASSES)
    assert better.verdict == "canary better" and better.direction == "higher"
    assert better.difference == pytest.approx(better.canary.value - better.primary.value)
    assert better.ci_low > 0 and better.ci_low < better.difference < better.ci_high
    assert (better.primary.model, better.canary.model, better.primary.n, better.canary.n) == ("m:1", "m:2", 2000, 2000)
    worse = ab_verdict(ab_frame(1, 2000, 0.85, 2000, 0.70), "classification", CLASSES)
    assert worse.verdict == "canary worse" and worse.ci_high < 0 and worse.more_labels_needed is None


def test_each_side_is_its_newest_model_only() -> None:
    frame = ab_frame(11, 2000, 0.80, 2000, 0.80)
    rng = np.random.default_rng(12)
    # an older canary model, bad and earlier in the window, is no part of today's comparison
    old = labelled_frame(rng, 2000, 0.5, variant="canary", model="m:0")
    old["ts"] = old["ts"] - pd.Timedelta(hours=2)
    v = ab_verdict(pd.concat([frame, old], ignore_index=True), "classification", CLASSES)
    assert (v.canary.model, v.canary.n) == ("m:2", 2000)
    assert v.as_dict() == ab_verdict(frame, "classification", CLASSES).as_dict()


def test_regression_rmse_lower_is_better() -> None:
    rng = np.random.default_rng(2)
    frame = pd.concat([regression_frame(rng, 1500, 1.0, variant="primary", model="r:1"),
                       regression_frame(rng, 1500, 0.6, variant="canary", model="r:2")])  # fmt: skip
    v = ab_verdict(frame, "regression", [])
    assert (v.metric, v.direction, v.verdict) == ("rmse", "lower", "canary better")
    assert v.difference < 0 and v.ci_high < 0
    assert v.min_effect == pytest.approx(0.05 * v.primary.value)  # relative to the primary's RMSE
    assert ab_verdict(frame, "regression", [], metric="r2").verdict == "canary better"
    swapped = frame.assign(variant=frame["variant"].map({"primary": "canary", "canary": "primary"}))
    assert ab_verdict(swapped, "regression", [], metric="mae").verdict == "canary worse"


def test_identical_models_at_large_n_give_no_difference_detected() -> None:
    for seed in range(3):
        v = ab_verdict(ab_frame(10 + seed, 20000, 0.8, 20000, 0.8), "classification", CLASSES)
        assert v.verdict == "no difference detected", v.as_dict()
        assert v.ci_high - v.ci_low < 2 * v.min_effect


def test_a_significant_but_negligible_difference_is_no_difference() -> None:
    v = ab_verdict(ab_frame(5, 20000, 0.80, 20000, 0.83), "classification", CLASSES, min_effect=0.06)
    assert v.ci_low > 0 and v.ci_high < 0.06
    assert v.verdict == "no difference detected" and "negligible" in v.reason


def test_small_n_says_not_enough_labels_with_about_the_n_the_width_needs() -> None:
    v = ab_verdict(ab_frame(3, 150, 0.8, 150, 0.8), "classification", CLASSES)
    assert v.verdict == f"not enough labels (about {v.more_labels_needed} more needed)"
    # the normal approximation: a ±0.02 interval on a difference of two 0.8 accuracies needs
    # 2 · 1.96² · 0.16 / 0.02² ≈ 3,073 labels per variant, 6,146 in all
    assert v.more_labels_needed is not None
    assert 0.75 * 5846 < v.more_labels_needed < 1.3 * 5846
    # and with that many more labels the interval's half-width is about ±0.02
    grown = ab_verdict(ab_frame(4, 150 + v.more_labels_needed // 2, 0.8, 150 + v.more_labels_needed // 2, 0.8),
                       "classification", CLASSES)  # fmt: skip
    assert (grown.ci_high - grown.ci_low) / 2 == pytest.approx(0.02, rel=0.2)


def test_below_the_minimum_on_one_side_or_none_at_all() -> None:
    v = ab_verdict(ab_frame(6, 5000, 0.8, 40, 0.8), "classification", CLASSES)
    assert v.verdict.startswith("not enough labels (about ") and v.ci_low is not None
    # the canary gets 40 / 5040 of the labels: reaching 100 needs about 7,600 more in all
    assert v.more_labels_needed is not None and v.more_labels_needed >= 100 / 40 * 5040 - 5040
    none = ab_verdict(ab_frame(7, 300, 0.8, 0, 0.8), "classification", CLASSES)
    assert none.verdict == f"not enough labels (about {MIN_LABELLED} more needed)"
    assert none.canary.n == 0 and none.canary.value is None and none.difference is None
    empty = ab_verdict(ab_frame(7, 0, 0.8, 0, 0.8), "classification", CLASSES)
    assert empty.more_labels_needed == 2 * MIN_LABELLED and empty.primary.model is None


@pytest.mark.parametrize("metric", ["accuracy", "rmse"])
def test_the_interval_covers_the_true_difference_in_a_seeded_simulation(metric: str) -> None:
    rng = np.random.default_rng(42)
    hits, runs = 0, 120
    for i in range(runs):
        if metric == "accuracy":
            frame = pd.concat([labelled_frame(rng, 300, 0.75, variant="primary", model="a"),
                               labelled_frame(rng, 300, 0.80, variant="canary", model="b")])  # fmt: skip
            truth = 0.05
            v = ab_verdict(frame, "classification", CLASSES, rounds=1000, seed=i)
        else:
            frame = pd.concat([regression_frame(rng, 300, 1.0, variant="primary", model="a"),
                               regression_frame(rng, 300, 0.8, variant="canary", model="b")])  # fmt: skip
            truth = 0.8 - 1.0  # RMSE of N(0, σ) noise is σ
            v = ab_verdict(frame, "regression", [], rounds=1000, seed=i)
        hits += v.ci_low <= truth <= v.ci_high
    # 95% nominal: 114 of 120 expected, sd ≈ 2.4
    assert hits >= 106, hits


def test_metric_values_equal_quality_and_sklearn(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    records, labels = [], []
    for i in range(400):
        variant = "canary" if i % 2 else "primary"
        p = float(rng.random())
        records.append(Rec(f"r{i}", [probs(p)], variant=variant, model="m:2" if i % 2 else "m:1"))
        labels.append((f"r{i}", 0, "yes" if rng.random() < p else "no"))
    frame = labelled_rows([write_log(tmp_path / "log.parquet", records)], [write_labels(tmp_path / "l.parquet", labels)],
                          None, None)  # fmt: skip
    q = quality(frame, "classification", CLASSES)
    for metric in ("accuracy", "f1", "log_loss"):
        v = ab_verdict(frame, "classification", CLASSES, metric=metric, rounds=200)
        assert v.primary.value == pytest.approx(q["primary"].metrics[metric], abs=1e-12)
        assert v.canary.value == pytest.approx(q["canary"].metrics[metric], abs=1e-12)
        assert v.direction == ("lower" if metric == "log_loss" else "higher")
    mine = frame[frame["variant"] == "primary"]
    y = (mine["label"] == "yes").to_numpy()
    p = np.array([json.loads(s)["yes"] for s in mine["prediction"]])
    pred = p > 0.5
    assert q["primary"].metrics["f1"] == pytest.approx(f1_score(y, pred))
    assert q["primary"].metrics["log_loss"] == pytest.approx(log_loss(y, np.c_[1 - p, p]), abs=1e-6)


def test_multiclass_f1_bootstrap_and_the_result_dict() -> None:
    rng = np.random.default_rng(9)
    classes = ["a", "b", "c"]
    rows = []
    for variant, acc in (("primary", 0.5), ("canary", 0.8)):
        for i in range(1500):
            y = int(rng.integers(0, 3))
            top = y if rng.random() < acc else int((y + rng.integers(1, 3)) % 3)
            p = np.full(3, 0.2)
            p[top] = 0.6
            rows.append({"ts": pd.Timestamp("2026-11-30", tz="UTC"), "variant": variant, "model": variant,
                         "request_id": f"{variant}{i}", "row": 0,
                         "prediction": json.dumps(dict(zip(classes, p.tolist(), strict=True))), "label": classes[y]})  # fmt: skip
    v = ab_verdict(pd.DataFrame(rows), "classification", classes, metric="f1")
    assert v.verdict == "canary better"
    d = v.as_dict()
    assert set(d) >= {"metric", "direction", "primary", "canary", "difference", "ci_low", "ci_high", "confidence", "method",
                      "verdict", "more_labels_needed"}  # fmt: skip
    assert set(d["primary"]) == {"model", "n", "value"} and "bootstrap" in d["method"] and d["confidence"] == 0.95
    assert math.isfinite(d["difference"])


def test_bad_arguments_raise_usage_errors() -> None:
    frame = ab_frame(0, 10, 0.8, 10, 0.8)
    for kwargs in ({"metric": "rmse"}, {"confidence": 1.0}, {"rounds": 10}, {"min_effect": 0.0}):
        with pytest.raises(UsageError):
            ab_verdict(frame, "classification", CLASSES, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        ab_verdict(frame, "regression", [], metric="accuracy")


def test_the_p_value_agrees_with_the_interval_and_with_a_two_proportion_z_test() -> None:
    clear = ab_verdict(ab_frame(0, 2000, 0.70, 2000, 0.85), "classification", CLASSES)
    assert clear.p_value == pytest.approx(2 / 2001)  # no resample on the other side of 0: the floor of 2000 resamples
    for seed, acc in ((21, 0.80), (22, 0.815), (23, 0.83), (24, 0.845)):
        v = ab_verdict(ab_frame(seed, 2000, 0.80, 2000, acc), "classification", CLASSES)
        assert v.p_value is not None and v.ci_low is not None and v.ci_high is not None
        assert (v.p_value < 0.05) == (not v.ci_low <= 0 <= v.ci_high), (seed, v.p_value, v.ci_low, v.ci_high)
        a, b = v.primary.value, v.canary.value
        pooled = (a + b) / 2
        z = (b - a) / math.sqrt(pooled * (1 - pooled) * 2 / 2000)
        assert v.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), abs=0.03), (seed, v.p_value)
        assert v.as_dict()["p_value"] == v.p_value


def test_bootstrap_p_counts_the_resamples_on_the_far_side_of_zero() -> None:
    from mlbox.monitor.abtest import bootstrap_p

    assert bootstrap_p(np.array([0.1] * 999)) == pytest.approx(2 / 1000)
    assert bootstrap_p(np.array([-1.0, 1.0] * 500)) == 1.0
    assert bootstrap_p(np.array([-0.1] * 49 + [0.2] * 950)) == pytest.approx(2 * 50 / 1000)
    assert bootstrap_p(np.array([])) is None
