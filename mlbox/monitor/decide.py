"""What a policy does next: a pure function from the evidence and the past actions to retrain, rollback or promote.

No I/O and no clock: the caller gathers the evidence (latest check, serving stats, A/B verdict, deployment
state, whether a retrain job is in flight), passes `now`, records each decision with its evidence in
`monitor_actions` and carries it out. The rules, in the order they are applied:

- rollback: a canary with traffic breaches any threshold of `on_canary_breach` (error rate or p99 latency
  on at least `min_requests` canary requests; quality worse by more than `quality_delta` with the A/B verdict
  `canary worse` on at least `min_labels` labelled canary rows), and no rollback within its cool-down;
- promote (opt-in): the A/B verdict is `canary better` on at least `labels` labelled canary rows, the canary
  breaches nothing, no rollback is decided this round, and no promote within its cool-down;
- retrain: the primary variant of the latest check drifted, no retrain job is queued or running, no canary
  is live (the last retrain's canary is decided first), the check is newer than the last retrain, and no
  retrain within its cool-down.

A rule whose trigger holds but whose guard stops it is returned by `plan()` as a `Hold` saying why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from mlbox import clock
from mlbox.monitor.policy import Policy, duration_text, jsonable

Action = Literal["retrain", "rollback", "promote"]
# Past actions whose status says they were not carried out do not start a cool-down; every other one
# does, including a failed retrain, so a broken training spec cannot loop at the schedule's pace.
NOT_TAKEN = frozenset({"held", "skipped"})


@dataclass(frozen=True, kw_only=True)
class DeploymentState:
    """The deployment as the check saw it: primary and canary model refs, the canary's weight in percent."""

    primary: str
    canary: str | None = None
    canary_weight: float = 0.0

    @property
    def canary_live(self) -> bool:
        return self.canary is not None and self.canary_weight > 0


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """Everything `decide` looks at for one deployment, in the formats the monitor modules write.

    `check`: the latest `CheckResult.as_dict()` (None: none yet). `serving`: per variant
    `{"requests", "errors", "error_rate", "p50_ms", "p99_ms"}` over `serving_window` (a `Window.as_dict()`).
    `ab`: the A/B verdict dict (`metric`, `direction` "higher"|"lower", `difference` canary minus primary,
    `ci_low`, `ci_high`, `verdict`, `canary: {"n", ...}`), or None.
    """

    deployment: DeploymentState
    check: Mapping[str, Any] | None = None
    serving: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    serving_window: Mapping[str, Any] | None = None
    ab: Mapping[str, Any] | None = None
    retrain_active: bool = False


@dataclass(frozen=True)
class PastAction:
    """An action recorded for this deployment in `monitor_actions`: what, when (aware UTC), and its status."""

    action: str
    at: datetime
    status: str = "done"


@dataclass(frozen=True)
class Decision:
    """An action to take now, the one plain sentence why, and exactly the evidence that triggered it."""

    action: Action
    reason: str
    evidence: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "evidence": self.evidence}


@dataclass(frozen=True)
class Hold:
    """A rule that fired but was held back by a guard (cool-down, job in flight, live canary, …), and why."""

    action: Action
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    """The decisions of one round and the held rules."""

    decisions: list[Decision]
    held: list[Hold]


def decide(policy: Policy, evidence: Evidence, actions: Sequence[PastAction], now: datetime) -> list[Decision]:
    """The actions `policy` takes now on `evidence`, given the actions already taken; rollback before promote and retrain."""
    return plan(policy, evidence, actions, now).decisions


def plan(policy: Policy, evidence: Evidence, actions: Sequence[PastAction], now: datetime) -> Plan:
    """`decide`, and the rules that fired but were held back, with the reason for each."""
    decisions: list[Decision] = []
    held: list[Hold] = []
    breaches = _breaches(policy, evidence)
    if breaches:
        wait = _cooling(policy.on_canary_breach.cooldown_s if policy.on_canary_breach else 0, "rollback", actions, now)
        if wait:
            held.append(Hold("rollback", f"canary {evidence.deployment.canary} breaches its limits, but {wait}"))
        else:
            decisions.append(_rollback(policy, evidence, breaches))
    better = _better(policy, evidence)
    if better is not None:
        if breaches:
            held.append(Hold("promote", "the canary tests better but breaches its limits, so it is not promoted"))
        elif wait := _cooling(policy.on_canary_better.cooldown_s if policy.on_canary_better else 0, "promote", actions, now):
            held.append(Hold("promote", f"canary {evidence.deployment.canary} tests better, but {wait}"))
        else:
            decisions.append(better)
    drift = _drift(policy, evidence)
    if drift is not None:
        guard = _retrain_guard(policy, evidence, actions, now)
        if guard:
            held.append(Hold("retrain", f"the primary drifted, but {guard}"))
        else:
            decisions.append(drift)
    return Plan(decisions, held)


def _cooling(cooldown_s: int, action: str, actions: Sequence[PastAction], now: datetime) -> str | None:
    """Why `action` must wait (its last one is inside the cool-down), or None. A cool-down ends exactly at last + cooldown."""
    last = _last(action, actions)
    if last is None:
        return None
    if now - last >= timedelta(seconds=cooldown_s):  # a difference cannot overflow, a sum near the year 9999 can
        return None
    until = last + timedelta(seconds=cooldown_s)
    return f"the last {action} was at {clock.iso(last)} and its {duration_text(cooldown_s)} cool-down lasts until {clock.iso(until)}"


def _last(action: str, actions: Sequence[PastAction]) -> datetime | None:
    times = [a.at for a in actions if a.action == action and a.status not in NOT_TAKEN]
    return max(times) if times else None


# --- rollback -------------------------------------------------------------------------------------------


def _breaches(policy: Policy, evidence: Evidence) -> list[dict[str, Any]]:
    """Each threshold the live canary breaches: `{"metric", "value", "threshold", ...}`; [] when none or no canary traffic."""
    rule, state = policy.on_canary_breach, evidence.deployment
    if rule is None or not state.canary_live:
        return []
    out: list[dict[str, Any]] = []
    stats = evidence.serving.get("canary") or {}
    if stats.get("model") not in (None, state.canary):
        stats = {}  # the window's canary traffic is an earlier canary's: nothing yet about this one
    requests = _int(stats.get("requests"))
    if requests >= rule.min_requests:
        rate = _float(stats.get("error_rate"))
        if rate is None and requests:
            rate = _int(stats.get("errors")) / requests
        if rule.error_rate is not None and rate is not None and rate > rule.error_rate:
            out.append({"metric": "error_rate", "value": rate, "threshold": rule.error_rate, "requests": requests})
        p99 = _float(stats.get("p99_ms"))
        if rule.p99_ms is not None and p99 is not None and p99 > rule.p99_ms:
            out.append({"metric": "p99_ms", "value": p99, "threshold": rule.p99_ms, "requests": requests})
    gain = _quality_gain(evidence)
    if rule.quality_delta is not None and gain is not None:
        labels = _ab_labels(evidence.ab)
        worse = evidence.ab is not None and evidence.ab.get("verdict") == "canary worse"
        # the point estimate sets the size of the loss, the A/B verdict its significance: a small labelled
        # window of two equal models differs by a few points by chance alone
        if labels >= rule.min_labels and worse and gain < rule.quality_delta:
            metric = evidence.ab.get("metric") if evidence.ab else None
            out.append({"metric": f"quality_delta:{metric}", "value": gain, "threshold": rule.quality_delta, "labels": labels})
    return out


def _rollback(policy: Policy, evidence: Evidence, breaches: list[dict[str, Any]]) -> Decision:
    state = evidence.deployment
    said = "; ".join(_breach_text(b) for b in breaches)
    reason = f"canary {state.canary} at {state.canary_weight:g}% breaches its limits ({said}), so it is rolled back to {state.primary}"
    proof: dict[str, Any] = {
        "window": jsonable(evidence.serving_window),
        "primary": state.primary,
        "canary": state.canary,
        "canary_weight": state.canary_weight,
        "breaches": breaches,
        "thresholds": policy.on_canary_breach.as_dict() if policy.on_canary_breach else {},
        "serving": {v: jsonable(evidence.serving[v]) for v in ("primary", "canary") if v in evidence.serving},
    }
    if any(b["metric"].startswith("quality_delta") for b in breaches):
        proof["ab"] = jsonable(evidence.ab)
    return Decision("rollback", reason, proof)


def _breach_text(breach: dict[str, Any]) -> str:
    metric, value, limit = breach["metric"], breach["value"], breach["threshold"]
    if metric == "error_rate":
        return f"error rate {value:.2%} above {limit:.2%} on {breach['requests']} requests"
    if metric == "p99_ms":
        return f"p99 latency {value:.0f} ms above {limit:g} ms"
    name = metric.split(":", 1)[1]
    return f"{name} {value:+.4g} against the primary, below {limit:+g}, on {breach['labels']} labels"


# --- promote --------------------------------------------------------------------------------------------


def _better(policy: Policy, evidence: Evidence) -> Decision | None:
    rule, state, ab = policy.on_canary_better, evidence.deployment, evidence.ab
    if rule is None or not state.canary_live or ab is None or not _ab_is_current(evidence):
        return None
    labels = _ab_labels(ab)
    if ab.get("verdict") != "canary better" or labels < rule.labels:
        return None
    gain = _quality_gain(evidence)
    shown = f"{ab.get('metric')} {gain:+.4g}" if gain is not None else str(ab.get("metric"))
    reason = f"canary {state.canary} tests better than {state.primary} ({shown} on {labels} labels), so it is promoted"
    proof = {"window": jsonable(evidence.serving_window), "primary": state.primary, "canary": state.canary, "ab": jsonable(ab),
             "thresholds": rule.as_dict()}  # fmt: skip
    return Decision("promote", reason, proof)


# --- retrain --------------------------------------------------------------------------------------------


def _drift(policy: Policy, evidence: Evidence) -> Decision | None:
    """A retrain decision when the latest check found the primary variant drifted (shadow or canary drift does not count)."""
    check = evidence.check
    if policy.on_drift is None or check is None:
        return None
    primary = (check.get("variants") or {}).get("primary")
    if not primary or not primary.get("drifted"):
        return None
    drifted = {
        group: {name: _no_histogram(fd) for name, fd in (primary.get(group) or {}).items() if fd.get("drifted")}
        for group in ("features", "outputs")
    }
    names = [*drifted["features"], *(f"output {n}" for n in drifted["outputs"])]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    share = _float(primary.get("weighted_share"))
    share = _float(primary.get("share")) if share is None else share
    reason = (
        f"the primary {primary.get('model', evidence.deployment.primary)} drifted"
        f"{f' on {shown}' if shown else ''}{f' ({share:.0%} of features, weighted)' if share is not None else ''}"
        f", so it is retrained and deployed as a {policy.on_drift.canary_weight:g}% canary if its gate passes"
    )
    proof = {
        "checked_at": check.get("checked_at"),
        "window": jsonable(check.get("window")),
        "thresholds": jsonable(check.get("thresholds")),
        "variant": "primary",
        "model": primary.get("model"),
        "rows": primary.get("rows"),
        "share": primary.get("share"),
        "weighted_share": primary.get("weighted_share"),
        "drifted": drifted,
        "policy": policy.on_drift.as_dict(),
    }
    return Decision("retrain", reason, proof)


def _retrain_guard(policy: Policy, evidence: Evidence, actions: Sequence[PastAction], now: datetime) -> str | None:
    state = evidence.deployment
    if evidence.retrain_active:
        return "a retrain job for this deployment is already queued or running"
    if state.canary_live:
        return f"canary {state.canary} is live at {state.canary_weight:g}%: it is promoted or rolled back first"
    last = _last("retrain", actions)
    checked = _moment((evidence.check or {}).get("checked_at"))
    if last is not None and checked is not None and checked <= last:
        return f"that check ({clock.iso(checked)}) is not newer than the last retrain ({clock.iso(last)})"
    assert policy.on_drift is not None
    return _cooling(policy.on_drift.cooldown_s, "retrain", actions, now)


# --- reading the evidence -------------------------------------------------------------------------------


def _quality_gain(evidence: Evidence) -> float | None:
    """Canary minus primary in the metric's better direction (positive: the canary is better), or None."""
    ab = evidence.ab
    if ab is None or not _ab_is_current(evidence):
        return None
    difference = _float(ab.get("difference"))
    if difference is None:
        return None
    return -difference if ab.get("direction") == "lower" else difference


def _ab_is_current(evidence: Evidence) -> bool:
    """An A/B verdict that names its canary model must be about the deployment's current canary."""
    ab = evidence.ab or {}
    canary = ab.get("canary")
    model = canary.get("model") if isinstance(canary, Mapping) else None
    return model is None or model == evidence.deployment.canary


def _ab_labels(ab: Mapping[str, Any] | None) -> int:
    canary = (ab or {}).get("canary")
    return _int(canary.get("n")) if isinstance(canary, Mapping) else 0


def _no_histogram(feature: Mapping[str, Any]) -> dict[str, Any]:
    # the histogram is for plots; the audit keeps the statistics, rates and reason that made the verdict
    return {k: jsonable(v) for k, v in feature.items() if k != "histogram"}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) else 0


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) else None


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return clock.parse_iso(value)
        except ValueError:
            return None
    return None

