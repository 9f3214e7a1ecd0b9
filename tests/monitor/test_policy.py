"""Monitoring policies: the YAML format, strict validation with located errors, and the JSON round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlbox.errors import UsageError
from mlbox.monitor.policy import AlertConfig, OnCanaryBetter, OnDrift, Policy, WindowSpec, duration_text, parse_policies
from mlbox.monitor.verdict import Thresholds
from mlbox.monitor.window import Window

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

FULL = """
deployments:
  churn_api:
    window: 24h
    schedule: 1h
    drift:
      numeric: {alpha: 0.001, wasserstein: 0.15}
      features: {plan: {ignore: true}}
    on_drift:
      action: retrain
      canary_weight: 10
      cooldown: 24h
    on_canary_breach:
      error_rate: 0.05
      p99_ms: 250
      quality_delta: -0.02
      min_requests: 200
      cooldown: 1h
    on_canary_better:
      labels: 500
      action: promote
    alerts:
      webhook: https://hooks.example.com/services/T000/SECRET
  fraud_api:
    window: {since: 2026-11-01, until: "2026-11-02T12:00:00Z", last_rows: 5000}
"""


def one(body: str, name: str = "d") -> Policy:
    text = f"deployments:\n  {name}:\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
    (policy,) = parse_policies(text, "monitoring.yaml")
    return policy


def refused(body: str, *needles: str) -> UsageError:
    with pytest.raises(UsageError) as info:
        one(body)
    text = str(info.value)
    assert text.startswith("monitoring.yaml: "), text
    for needle in needles:
        assert needle in text, text
    return info.value


def test_full_policy_parses_into_typed_values() -> None:
    churn, fraud = parse_policies(FULL, "monitoring.yaml")
    assert churn.deployment == "churn_api" and churn.source == "monitoring.yaml"
    assert churn.window == Window(last_s=86400.0)
    assert churn.schedule_s == 3600
    assert churn.on_drift == OnDrift(canary_weight=10.0, cooldown_s=86400)
    breach = churn.on_canary_breach
    assert breach is not None
    assert (breach.error_rate, breach.p99_ms, breach.quality_delta, breach.min_requests, breach.min_labels, breach.cooldown_s) == (
        0.05, 250.0, -0.02, 200, 100, 3600)  # fmt: skip
    assert churn.on_canary_better == OnCanaryBetter(labels=500)
    assert churn.alerts == AlertConfig(webhook="https://hooks.example.com/services/T000/SECRET")
    # the drift section goes through Thresholds: per-kind overrides and per-feature ignores land where the check reads them
    thresholds = churn.thresholds()
    assert isinstance(thresholds, Thresholds)
    assert thresholds.for_feature("age", "numeric").alpha == 0.001
    assert thresholds.for_feature("age", "numeric").wasserstein == 0.15
    assert thresholds.for_feature("plan", "categorical").ignore is True
    # an unquoted YAML date stays an ISO time, read as UTC
    assert fraud.window == Window(since=datetime(2026, 11, 1, tzinfo=UTC), until=datetime(2026, 11, 2, 12, tzinfo=UTC), last_rows=5000)
    assert fraud.schedule_s is None and fraud.on_drift is None and fraud.on_canary_breach is None and fraud.alerts is None


def test_defaults_of_a_minimal_policy_and_of_empty_sections() -> None:
    bare = parse_policies("deployments:\n  d:\n", "m.yaml")[0]
    assert bare.window == Window(last_s=86400.0) and bare.schedule_s is None and bare.drift is None
    assert bare.thresholds() == Thresholds()
    p = one("on_drift: {}\non_canary_better: {}")
    assert p.on_drift == OnDrift(action="retrain", canary_weight=10.0, cooldown_s=86400)
    assert p.on_canary_better == OnCanaryBetter(labels=500, cooldown_s=3600)
    assert p.on_canary_breach is None  # promotion is opt-in, rollback thresholds are never implied
    assert one("window: {last_rows: 1000}").window == Window(last_rows=1000)
    assert one("window: {last: 2h, last_rows: 10}").window == Window(last_s=7200.0, last_rows=10)


@pytest.mark.parametrize("text", [FULL, "deployments:\n  d:\n    window: 90m\n    on_canary_breach: {p99_ms: 80}\n"])
def test_as_dict_round_trips_through_json(text: str) -> None:
    for policy in parse_policies(text, "monitoring.yaml"):
        stored = json.loads(json.dumps(policy.as_dict()))
        back = Policy.from_dict(policy.deployment, stored, policy.source)
        assert back == policy
        assert back.as_dict() == policy.as_dict()


def test_as_dict_writes_the_file_shape() -> None:
    churn = parse_policies(FULL, "monitoring.yaml")[0]
    d = churn.as_dict()
    assert d["window"] == "24h" and d["schedule"] == "1h"
    assert d["drift"] == {"numeric": {"alpha": 0.001, "wasserstein": 0.15}, "features": {"plan": {"ignore": True}}}
    assert d["on_drift"] == {"action": "retrain", "canary_weight": 10.0, "cooldown": "1d"}
    assert d["on_canary_breach"]["cooldown"] == "1h" and d["on_canary_breach"]["quality_delta"] == -0.02
    # the public form hides the receiver's token in the URL path
    assert churn.public_dict()["alerts"]["webhook"] == "https://hooks.example.com/…"
    assert "SECRET" not in json.dumps(churn.public_dict())


def test_webhook_from_an_environment_reference() -> None:
    p = one("alerts: {webhook: {$env: CHURN_WEBHOOK_URL}, allow_private: true, timeout_s: 2}")
    assert p.alerts is not None
    assert p.alerts.webhook is None and p.alerts.webhook_env == "CHURN_WEBHOOK_URL" and p.alerts.timeout_s == 2.0
    assert p.alerts.url({"CHURN_WEBHOOK_URL": "https://h.example.com/x"}) == "https://h.example.com/x"
    assert p.alerts.url({}) is None
    assert p.as_dict()["alerts"]["webhook"] == {"$env": "CHURN_WEBHOOK_URL"}
    assert Policy.from_dict("d", p.as_dict()) == Policy.from_dict("d", json.loads(json.dumps(p.as_dict())))


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("windw: 24h", ("deployments.d", "unknown key 'windw'")),
        ("on_drift: {action: retrain, cooldwn: 1h}", ("deployments.d.on_drift", "unknown key 'cooldwn'")),
        ("on_drift: {action: promote}", ("deployments.d.on_drift.action", "'promote' is not one of retrain")),
        ("on_drift: {canary_weight: 0}", ("on_drift.canary_weight", "above 0")),
        ("on_drift: {canary_weight: 150}", ("on_drift.canary_weight", "at most 100")),
        ("on_drift: {canary_weight: true}", ("on_drift.canary_weight",)),
        ("on_drift: {cooldown: 3600}", ("on_drift.cooldown", "expected a duration")),
        ("on_drift: {cooldown: 1x}", ("on_drift.cooldown", "invalid duration")),
        ("schedule: 30s", ("deployments.d.schedule", "at least 1m")),
        ("window: 0h", ("deployments.d.window", "invalid duration")),
        ("window: {}", ("deployments.d.window", "empty window")),
        ("window: {last: 1h, since: 2026-11-01}", ("deployments.d.window", "either --last or --since")),
        ("window: {since: 2026-11-02, until: 2026-11-01}", ("deployments.d.window", "before")),
        ("window: {since: yesterday}", ("deployments.d.window.since", "invalid --since")),
        ("window: {until: '2026-13-40'}", ("deployments.d.window.until",)),
        ("window: {last_rows: 0}", ("window.last_rows", "at least 1")),
        ("window: {last_rows: 1.5}", ("window.last_rows",)),
        ("on_canary_breach: {min_requests: 10}", ("on_canary_breach", "at least one threshold")),
        ("on_canary_breach: {error_rate: 1.5}", ("on_canary_breach.error_rate", "between 0 and 1")),
        ("on_canary_breach: {error_rate: .nan}", ("on_canary_breach.error_rate",)),
        ("on_canary_breach: {p99_ms: -1}", ("on_canary_breach.p99_ms", "above 0")),
        ("on_canary_breach: {quality_delta: 0.02}", ("on_canary_breach.quality_delta", "at most 0")),
        ("on_canary_breach: {error_rate: 0.1, min_labels: 0}", ("on_canary_breach.min_labels",)),
        ("on_canary_better: {labels: 500, action: rollback}", ("on_canary_better.action",)),
        ("on_canary_better: {labels: -5}", ("on_canary_better.labels",)),
        ("drift: {numerc: {alpha: 0.1}}", ("deployments.d.drift", "numerc")),
        ("drift: {numeric: {alpha: 2}}", ("deployments.d.drift",)),
        ("drift: [1, 2]", ("deployments.d.drift", "expected a mapping")),
        ("alerts: {webhook: ftp://example.com/x}", ("alerts.webhook", "not http or https")),
        ("alerts: {webhook: 'http://127.0.0.1:9000/x'}", ("alerts.webhook", "loopback")),
        ("alerts: {webhook: 'http://169.254.169.254/latest'}", ("alerts.webhook", "link-local")),
        ("alerts: {webhook: 'https://user:pw@example.com/'}", ("alerts.webhook", "user info")),
        ("alerts: {webhook: {$file: secret.txt}}", ("alerts.webhook", "unknown key '$file'")),
        ("alerts: {webhook: {$env: ''}}", ("alerts.webhook",)),
        ("alerts: {webhook: 42}", ("alerts.webhook",)),
        ("alerts: {allow_private: 'yes please'}", ("alerts.allow_private",)),
        ("alerts: {timeout_s: 0}", ("alerts.timeout_s",)),
        ("on_drift: [retrain]", ("deployments.d.on_drift", "expected a mapping")),
    ],
)
def test_bad_policies_are_refused_with_the_key_path(body: str, needles: tuple[str, ...]) -> None:
    refused(body, *needles)


def test_literal_private_webhook_allowed_when_said_so() -> None:
    p = one("alerts: {webhook: 'http://127.0.0.1:9000/x', allow_private: true}")
    assert p.alerts is not None and p.alerts.webhook == "http://127.0.0.1:9000/x"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no policies"),
        ("deployments: {}", "deployments: expected a mapping"),
        ("deployments: [a, b]", "deployments: expected a mapping"),
        ("policies: {}", "unknown key 'policies'"),
        ("deployments:\n  Churn-API: {}\n", "invalid deployment name 'Churn-API'"),
        ("deployments:\n  d: [1]\n", "deployments.d: expected a mapping"),
        ("deployments: {d: {window: 1h}", "not valid YAML"),
        ("!!python/object/apply:os.system ['true']", "not valid YAML"),
        ("deployments:\n  d:\n    window: {until: 2026-13-40}\n", "not valid YAML: month must be in 1..12"),  # safe_load: no object construction
    ],
)
def test_bad_files_are_refused(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_policies(text, "monitoring.yaml")
    assert str(info.value).startswith("monitoring.yaml") and needle in str(info.value)


def test_duration_text_is_the_shortest_exact_form() -> None:
    assert [duration_text(s) for s in (45, 60, 5400, 3600, 86400, 604800, 90061)] == ["45s", "1m", "90m", "1h", "1d", "1w", "90061s"]


def test_window_spec_keeps_what_was_written() -> None:
    assert WindowSpec(last="24h").as_dict() == "24h"
    assert WindowSpec(last_rows=5).as_dict() == {"last_rows": 5}


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.iterdir() if (p / "train.yaml").is_file()))
def test_every_template_ships_a_valid_policy(template: str) -> None:
    path = TEMPLATES / template / "monitoring.yaml"
    policies = parse_policies(path.read_text(encoding="utf-8"), str(path))
    assert policies, path
    for policy in policies:
        assert policy.schedule_s is not None and policy.on_drift is not None and policy.on_canary_breach is not None
        assert Policy.from_dict(policy.deployment, json.loads(json.dumps(policy.as_dict())), policy.source) == policy
