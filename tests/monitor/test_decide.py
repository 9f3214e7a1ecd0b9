"""The policy decision rules: each trigger, each guard, every cool-down edge, and the evidence each decision carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlbox.monitor.decide import Decision, DeploymentState, Evidence, PastAction, decide, plan
from mlbox.monitor.policy import Policy, parse_policies

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CHECKED = NOW - timedelta(minutes=5)

POLICY_YAML = """
deployments:
  churn_api:
    window: 24h
    on_drift: {canary_weight: 10, cooldown: 24h}
    on_canary_breach: {error_rate: 0.05, p99_ms: 250, quality_delta: -0.02, min_requests: 100, min_labels: 200, cooldown: 1h}
    on_canary_better: {labels: 500, cooldown: 2h}
"""


def policy(text: str = POLICY_YAML) -> Policy:
    return parse_policies(text, "monitoring.yaml")[0]


def feature(name: str, drifted: bool) -> dict[str, Any]:
    return {
        "name": name, "kind": "numeric", "status": "drift" if drifted else "ok", "drifted": drifted, "rows": 5000,
        "null_rate": 0.0, "out_of_range_rate": 0.01, "unseen_rate": None, "reason": f"{name} moved" if drifted else "unchanged",
        "tests": {"ks": {"statistic": 0.2 if drifted else 0.01, "p_value": 1e-9 if drifted else 0.6}, "wasserstein": {"value": 0.3}},
        "histogram": {"bins": ["a", "b"], "reference": [0.5, 0.5], "current": [0.4, 0.6]},
    }  # fmt: skip


def check(primary_drifted: bool = True, *, canary_drifted: bool = False, checked_at: datetime = CHECKED) -> dict[str, Any]:
    def variant(model: str, drifted: bool) -> dict[str, Any]:
        return {
            "model": model, "rows": 5000, "drifted": drifted, "share": 0.5 if drifted else 0.0, "weighted_share": 0.6 if drifted else 0.0,
            "features": {"age": feature("age", drifted), "calls": feature("calls", False)},
            "outputs": {"p_yes": feature("p_yes", drifted)},
        }  # fmt: skip

    return {
        "deployment": "churn_api", "checked_at": checked_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "window": {"last_s": 86400.0, "since": "2026-11-30T11:55:00Z", "until": "2026-12-01T11:55:00Z", "last_rows": None},
        "drifted": primary_drifted or canary_drifted, "thresholds": {"dataset_share": 0.25},
        "variants": {"primary": variant("churn:1", primary_drifted), "canary": variant("churn:2", canary_drifted)},
    }  # fmt: skip


def stats(requests: int = 1000, errors: int = 0, p99: float = 40.0) -> dict[str, Any]:
    return {"requests": requests, "errors": errors, "error_rate": errors / requests if requests else None, "p50_ms": 5.0, "p99_ms": p99}


def ab(verdict: str, difference: float, n: int = 1000, *, direction: str = "higher", model: str | None = "churn:2") -> dict[str, Any]:
    canary: dict[str, Any] = {"n": n, "value": 0.8 + difference}
    if model is not None:
        canary["model"] = model
    return {"metric": "roc_auc", "direction": direction, "difference": difference, "ci_low": difference - 0.01,
            "ci_high": difference + 0.01, "verdict": verdict, "canary": canary, "primary": {"n": 4000, "value": 0.8}}  # fmt: skip


LIVE = DeploymentState(primary="churn:1", canary="churn:2", canary_weight=10.0)
NO_CANARY = DeploymentState(primary="churn:1")
WINDOW = {"last_s": 3600.0, "since": "2026-12-01T11:00:00Z", "until": "2026-12-01T12:00:00Z", "last_rows": None}


def evidence(state: DeploymentState = LIVE, **kw: Any) -> Evidence:
    kw.setdefault("serving", {"primary": stats(), "canary": stats()})
    return Evidence(deployment=state, serving_window=WINDOW, **kw)


def actions_of(decisions: list[Decision]) -> list[str]:
    return [d.action for d in decisions]


# --- retrain --------------------------------------------------------------------------------------------


def test_primary_drift_retrains_with_the_evidence_that_triggered_it() -> None:
    (d,) = decide(policy(), evidence(NO_CANARY, check=check()), [], NOW)
    assert d.action == "retrain"
    assert d.reason == (
        "the primary churn:1 drifted on age, output p_yes (60% of features, weighted), "
        "so it is retrained and deployed as a 10% canary if its gate passes"
    )
    e = d.evidence
    assert e["window"] == check()["window"] and e["thresholds"] == {"dataset_share": 0.25}
    assert e["checked_at"] == check()["checked_at"] and e["model"] == "churn:1" and e["weighted_share"] == 0.6
    # exactly the drifted features and outputs, statistics kept, histograms dropped
    assert set(e["drifted"]["features"]) == {"age"} and set(e["drifted"]["outputs"]) == {"p_yes"}
    assert e["drifted"]["features"]["age"]["tests"]["ks"]["p_value"] == 1e-9
    assert "histogram" not in e["drifted"]["features"]["age"]
    assert e["policy"] == {"action": "retrain", "canary_weight": 10.0, "cooldown": "1d"}
    assert d.as_dict() == {"action": "retrain", "reason": d.reason, "evidence": e}


def test_no_retrain_without_drift_of_the_primary() -> None:
    p = policy()
    assert decide(p, evidence(NO_CANARY, check=None), [], NOW) == []
    assert decide(p, evidence(NO_CANARY, check=check(False)), [], NOW) == []
    # a drifted canary or shadow is no reason to retrain the primary
    assert decide(p, evidence(NO_CANARY, check=check(False, canary_drifted=True)), [], NOW) == []
    no_primary = {**check(), "variants": {"shadow": check()["variants"]["primary"]}}
    assert decide(p, evidence(NO_CANARY, check=no_primary), [], NOW) == []


def test_no_retrain_without_an_on_drift_rule() -> None:
    p = policy("deployments:\n  churn_api:\n    on_canary_breach: {error_rate: 0.1}\n")
    assert plan(p, evidence(NO_CANARY, check=check()), [], NOW).decisions == []
    assert plan(p, evidence(NO_CANARY, check=check()), [], NOW).held == []


def test_retrain_held_while_a_retrain_job_is_queued_or_running() -> None:
    result = plan(policy(), evidence(NO_CANARY, check=check(), retrain_active=True), [], NOW)
    assert result.decisions == []
    assert [h.action for h in result.held] == ["retrain"] and "already queued or running" in result.held[0].reason


def test_retrain_held_while_a_canary_is_live() -> None:
    result = plan(policy(), evidence(LIVE, check=check()), [], NOW)
    assert actions_of(result.decisions) == []
    assert "canary churn:2 is live at 10%" in result.held[0].reason
    # a canary at weight 0 (rolled back) no longer holds it
    rolled_back = DeploymentState(primary="churn:1", canary="churn:2", canary_weight=0.0)
    assert actions_of(decide(policy(), evidence(rolled_back, check=check()), [], NOW)) == ["retrain"]


@pytest.mark.parametrize(
    ("ago", "expected"),
    [
        (timedelta(hours=24) - timedelta(seconds=1), []),  # one second inside the cool-down
        (timedelta(hours=24), ["retrain"]),  # the cool-down ends exactly at last + 24h
        (timedelta(hours=24, seconds=1), ["retrain"]),
        (timedelta(0), []),
        (-timedelta(minutes=1), []),  # an action stamped in the future (clock skew) still cools
    ],
)
def test_retrain_cooldown_edges(ago: timedelta, expected: list[str]) -> None:
    # the check is newer than the last retrain in every case, so only the cool-down decides
    last = NOW - ago
    result = plan(policy(), evidence(NO_CANARY, check=check(checked_at=max(last, NOW) + timedelta(seconds=1))), [PastAction("retrain", last)], NOW)
    assert actions_of(result.decisions) == expected
    if not expected:
        assert "cool-down lasts until 2026-12-" in result.held[0].reason


def test_retrain_cooldown_counts_failed_retrains_but_not_held_ones() -> None:
    last = NOW - timedelta(hours=1)
    e = evidence(NO_CANARY, check=check())
    assert decide(policy(), e, [PastAction("retrain", last, "failed")], NOW) == []
    assert actions_of(decide(policy(), e, [PastAction("retrain", last, "held")], NOW)) == ["retrain"]
    # other actions do not start the retrain cool-down, and the newest retrain is the one that counts
    assert actions_of(decide(policy(), e, [PastAction("rollback", last), PastAction("promote", last)], NOW)) == ["retrain"]
    old, recent = PastAction("retrain", NOW - timedelta(days=3)), PastAction("retrain", NOW - timedelta(hours=2))
    assert decide(policy(), e, [old, recent], NOW) == []


def test_a_check_not_newer_than_the_last_retrain_does_not_retrain_again() -> None:
    last = NOW - timedelta(days=2)  # long past the cool-down
    for checked_at in (last - timedelta(hours=1), last):
        result = plan(policy(), evidence(NO_CANARY, check=check(checked_at=checked_at)), [PastAction("retrain", last)], NOW)
        assert result.decisions == [] and "not newer than the last retrain" in result.held[0].reason
    fresh = check(checked_at=last + timedelta(seconds=1))
    assert actions_of(decide(policy(), evidence(NO_CANARY, check=fresh), [PastAction("retrain", last)], NOW)) == ["retrain"]


# --- rollback -------------------------------------------------------------------------------------------


def test_canary_error_rate_breach_rolls_back() -> None:
    e = evidence(serving={"primary": stats(), "canary": stats(requests=200, errors=20)})
    (d,) = decide(policy(), e, [], NOW)
    assert d.action == "rollback"
    assert d.reason == (
        "canary churn:2 at 10% breaches its limits (error rate 10.00% above 5.00% on 200 requests), so it is rolled back to churn:1"
    )
    assert d.evidence["breaches"] == [{"metric": "error_rate", "value": 0.1, "threshold": 0.05, "requests": 200}]
    assert d.evidence["window"] == WINDOW and d.evidence["canary"] == "churn:2" and d.evidence["primary"] == "churn:1"
    assert d.evidence["serving"]["canary"]["errors"] == 20 and d.evidence["serving"]["primary"]["errors"] == 0
    assert d.evidence["thresholds"]["error_rate"] == 0.05 and "ab" not in d.evidence


def test_error_rate_from_counts_when_the_rate_is_missing() -> None:
    canary = {"requests": 100, "errors": 6, "p99_ms": 10.0}
    (d,) = decide(policy(), evidence(serving={"canary": canary}), [], NOW)
    assert d.evidence["breaches"][0]["value"] == pytest.approx(0.06)


def test_serving_stats_of_an_earlier_canary_are_not_held_against_this_one() -> None:
    earlier = {**stats(errors=500), "model": "churn:5"}
    assert decide(policy(), evidence(serving={"primary": stats(), "canary": earlier}), [], NOW) == []
    current = {**stats(errors=500), "model": "churn:2"}
    assert actions_of(decide(policy(), evidence(serving={"primary": stats(), "canary": current}), [], NOW)) == ["rollback"]


def test_p99_breach_rolls_back() -> None:
    (d,) = decide(policy(), evidence(serving={"primary": stats(), "canary": stats(p99=400.0)}), [], NOW)
    assert d.action == "rollback" and "p99 latency 400 ms above 250 ms" in d.reason
    assert [b["metric"] for b in d.evidence["breaches"]] == ["p99_ms"]


@pytest.mark.parametrize(
    ("canary", "expected"),
    [
        (stats(requests=99, errors=50, p99=900.0), []),  # below min_requests: too little traffic to judge
        (stats(requests=100, errors=5), []),  # exactly at the limit is not above it
        (stats(requests=100, errors=6), ["rollback"]),
        (stats(requests=100, p99=250.0), []),
        (stats(requests=100, p99=250.5), ["rollback"]),
    ],
)
def test_serving_breach_edges(canary: dict[str, Any], expected: list[str]) -> None:
    assert actions_of(decide(policy(), evidence(serving={"primary": stats(), "canary": canary}), [], NOW)) == expected


def test_quality_breach_needs_a_significant_loss_beyond_the_delta_on_enough_labels() -> None:
    p = policy()
    (d,) = decide(p, evidence(ab=ab("canary worse", -0.05)), [], NOW)
    assert d.action == "rollback" and "roc_auc -0.05 against the primary, below -0.02, on 1000 labels" in d.reason
    assert d.evidence["ab"]["verdict"] == "canary worse"
    assert d.evidence["breaches"] == [{"metric": "quality_delta:roc_auc", "value": -0.05, "threshold": -0.02, "labels": 1000}]
    assert decide(p, evidence(ab=ab("no difference detected", -0.05)), [], NOW) == []  # not significant
    assert decide(p, evidence(ab=ab("canary worse", -0.01)), [], NOW) == []  # significant but smaller than accepted
    assert decide(p, evidence(ab=ab("canary worse", -0.02)), [], NOW) == []  # exactly the accepted loss
    assert decide(p, evidence(ab=ab("canary worse", -0.05, n=199)), [], NOW) == []  # under min_labels
    assert actions_of(decide(p, evidence(ab=ab("canary worse", -0.05, n=200)), [], NOW)) == ["rollback"]
    # an A/B verdict about some other canary model is stale
    assert decide(p, evidence(ab=ab("canary worse", -0.05, model="churn:7")), [], NOW) == []


def test_quality_direction_for_a_lower_is_better_metric() -> None:
    p = policy()
    # log loss: the canary's is 0.05 higher, i.e. worse by 0.05
    (d,) = decide(p, evidence(ab={**ab("canary worse", 0.05, direction="lower"), "metric": "log_loss"}), [], NOW)
    assert d.evidence["breaches"][0] == {"metric": "quality_delta:log_loss", "value": -0.05, "threshold": -0.02, "labels": 1000}
    assert decide(p, evidence(ab={**ab("canary worse", -0.05, direction="lower"), "metric": "log_loss"}), [], NOW) == []


def test_several_breaches_are_all_in_the_evidence() -> None:
    e = evidence(serving={"primary": stats(), "canary": stats(requests=500, errors=100, p99=600.0)}, ab=ab("canary worse", -0.1))
    (d,) = decide(policy(), e, [], NOW)
    assert [b["metric"] for b in d.evidence["breaches"]] == ["error_rate", "p99_ms", "quality_delta:roc_auc"]
    assert "ab" in d.evidence


def test_no_rollback_without_a_canary_that_has_traffic() -> None:
    bad = {"primary": stats(), "canary": stats(requests=500, errors=400)}
    assert decide(policy(), evidence(NO_CANARY, serving=bad), [], NOW) == []
    zero = DeploymentState(primary="churn:1", canary="churn:2", canary_weight=0.0)
    assert plan(policy(), evidence(zero, serving=bad), [], NOW).held == []  # nothing to roll back, nothing held


@pytest.mark.parametrize(
    ("ago", "expected"),
    [(timedelta(minutes=59, seconds=59), []), (timedelta(hours=1), ["rollback"]), (timedelta(hours=3), ["rollback"])],
)
def test_rollback_cooldown_edges(ago: timedelta, expected: list[str]) -> None:
    e = evidence(serving={"primary": stats(), "canary": stats(errors=500)})
    result = plan(policy(), e, [PastAction("rollback", NOW - ago)], NOW)
    assert actions_of(result.decisions) == expected
    assert [h.action for h in result.held] == ([] if expected else ["rollback"])


# --- promote --------------------------------------------------------------------------------------------


def test_canary_better_on_enough_labels_promotes() -> None:
    (d,) = decide(policy(), evidence(ab=ab("canary better", 0.03)), [], NOW)
    assert d.action == "promote"
    assert d.reason == "canary churn:2 tests better than churn:1 (roc_auc +0.03 on 1000 labels), so it is promoted"
    assert d.evidence["ab"]["verdict"] == "canary better" and d.evidence["thresholds"]["labels"] == 500
    assert d.evidence["window"] == WINDOW


@pytest.mark.parametrize(
    ("verdict_n", "expected"),
    [(("canary better", 499), []), (("canary better", 500), ["promote"]), (("no difference detected", 5000), []),
     (("not enough labels (about 300 more needed)", 50), [])],
)  # fmt: skip
def test_promote_needs_the_verdict_and_the_labels(verdict_n: tuple[str, int], expected: list[str]) -> None:
    verdict, n = verdict_n
    assert actions_of(decide(policy(), evidence(ab=ab(verdict, 0.03, n=n)), [], NOW)) == expected


def test_promote_is_opt_in() -> None:
    p = policy("deployments:\n  churn_api:\n    on_canary_breach: {error_rate: 0.1}\n")
    assert decide(p, evidence(ab=ab("canary better", 0.05, n=10_000)), [], NOW) == []


def test_promote_only_with_a_live_canary_it_is_about() -> None:
    assert decide(policy(), evidence(NO_CANARY, ab=ab("canary better", 0.05)), [], NOW) == []
    assert decide(policy(), evidence(ab=ab("canary better", 0.05, model="churn:9")), [], NOW) == []
    # an A/B result that does not name its model is taken as about the current canary
    assert actions_of(decide(policy(), evidence(ab=ab("canary better", 0.05, model=None)), [], NOW)) == ["promote"]


def test_rollback_wins_over_promote_in_the_same_round() -> None:
    e = evidence(serving={"primary": stats(), "canary": stats(errors=300)}, ab=ab("canary better", 0.05))
    result = plan(policy(), e, [], NOW)
    assert actions_of(result.decisions) == ["rollback"]
    assert [h.action for h in result.held] == ["promote"]


def test_a_breaching_canary_is_not_promoted_even_while_its_rollback_cools_down() -> None:
    e = evidence(serving={"primary": stats(), "canary": stats(errors=300)}, ab=ab("canary better", 0.05))
    result = plan(policy(), e, [PastAction("rollback", NOW - timedelta(minutes=10))], NOW)
    assert result.decisions == []
    assert sorted(h.action for h in result.held) == ["promote", "rollback"]


@pytest.mark.parametrize(("ago", "expected"), [(timedelta(hours=2) - timedelta(microseconds=1), []), (timedelta(hours=2), ["promote"])])
def test_promote_cooldown_edges(ago: timedelta, expected: list[str]) -> None:
    assert actions_of(decide(policy(), evidence(ab=ab("canary better", 0.05)), [PastAction("promote", NOW - ago)], NOW)) == expected


def test_drift_and_a_breach_in_one_round_roll_back_and_hold_the_retrain() -> None:
    e = evidence(check=check(), serving={"primary": stats(), "canary": stats(errors=300)})
    result = plan(policy(), e, [], NOW)
    assert actions_of(result.decisions) == ["rollback"]
    assert [h.action for h in result.held] == ["retrain"]


def test_garbage_in_the_evidence_is_no_evidence() -> None:
    """NaN, missing and wrongly typed statistics never trigger an action and never raise."""
    junk = {"requests": float("nan"), "errors": "many", "error_rate": float("nan"), "p99_ms": None}
    e = evidence(serving={"canary": junk}, ab={"verdict": "canary worse", "difference": float("nan"), "canary": {"n": True}})
    assert decide(policy(), e, [], NOW) == []
    broken_check = {"checked_at": "not a time", "variants": {"primary": {"drifted": True, "features": {}, "outputs": None}}}
    (d,) = decide(policy(), evidence(NO_CANARY, check=broken_check), [PastAction("retrain", NOW - timedelta(days=5))], NOW)
    assert d.action == "retrain" and d.evidence["drifted"] == {"features": {}, "outputs": {}}
