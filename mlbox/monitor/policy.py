"""Monitoring policies: what to check per deployment, how often, and when to retrain, roll back or promote.

Parsed from a project's `monitoring.yaml` (`yaml.safe_load` only, strict keys) into frozen values;
`Policy.as_dict()` gives the same shape as the file, which `Policy.from_dict()` reads back, so a policy
stored as JSON in meta.db round-trips exactly. docs/monitoring-policies.md documents every key.
"""

from __future__ import annotations

import re

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, TypeVar

from mlbox.errors import UsageError
from mlbox.monitor.alerts import check_url_syntax
from mlbox.monitor.verdict import Thresholds
from mlbox.monitor.window import Window
from mlbox.types import check_keys, check_name, parse_duration, printable

T = TypeVar("T")
MIN_SCHEDULE_S = 60  # a check reads the whole window of the log; more often than once a minute only burns the cores

POLICY_KEYS = {"window", "schedule", "drift", "on_drift", "on_canary_breach", "on_canary_better", "alerts"}
WINDOW_KEYS = {"last", "since", "until", "last_rows"}
ON_DRIFT_KEYS = {"action", "canary_weight", "cooldown"}
BREACH_KEYS = {"error_rate", "p99_ms", "quality_delta", "min_requests", "min_labels", "cooldown"}
BETTER_KEYS = {"labels", "action", "cooldown"}
ALERT_KEYS = {"webhook", "allow_private", "timeout_s"}


@dataclass(frozen=True, kw_only=True)
class WindowSpec:
    """The window a policy's checks read, as written: `last` (a duration), or `since`/`until`, optionally `last_rows`."""

    last: str | None = None
    since: str | None = None
    until: str | None = None
    last_rows: int | None = None

    def window(self) -> Window:
        return Window.parse(self.last, self.since, self.until, self.last_rows)

    def as_dict(self) -> str | dict[str, Any]:
        if self.last is not None and self.since is None and self.until is None and self.last_rows is None:
            return self.last
        written = {"last": self.last, "since": self.since, "until": self.until, "last_rows": self.last_rows}
        return {k: v for k, v in written.items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class OnDrift:
    """On a drifted primary: enqueue a retrain from the deployed model's spec; deploy it as a canary at `canary_weight` percent."""

    action: Literal["retrain"] = "retrain"
    canary_weight: float = 10.0  # percent of requests, like `mlbox deploy canary --weight`
    cooldown_s: int = 86400

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "canary_weight": self.canary_weight, "cooldown": duration_text(self.cooldown_s)}


@dataclass(frozen=True, kw_only=True)
class OnCanaryBreach:
    """Roll the canary back when any stated threshold is breached (None: that test is off)."""

    error_rate: float | None = None
    p99_ms: float | None = None
    quality_delta: float | None = None  # canary minus primary in the metric's better direction; breach below it
    min_requests: int = 100
    min_labels: int = 100
    cooldown_s: int = 3600

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in ("error_rate", "p99_ms", "quality_delta") if getattr(self, k) is not None}
        return {**out, "min_requests": self.min_requests, "min_labels": self.min_labels, "cooldown": duration_text(self.cooldown_s)}


@dataclass(frozen=True, kw_only=True)
class OnCanaryBetter:
    """Opt-in: promote the canary once the A/B verdict is `canary better` on at least `labels` labelled canary rows."""

    labels: int = 500
    action: Literal["promote"] = "promote"
    cooldown_s: int = 3600

    def as_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "action": self.action, "cooldown": duration_text(self.cooldown_s)}


@dataclass(frozen=True, kw_only=True)
class AlertConfig:
    """Where alerts go besides the log: a webhook URL (or a `{"$env": NAME}` reference to one), checked before each POST."""

    webhook: str | None = None
    webhook_env: str | None = None  # the name of the environment variable that holds the URL
    allow_private: bool = False
    timeout_s: float = 5.0

    def url(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The webhook URL, reading a `$env` reference from `environ` (the settings' environment); None: no webhook."""
        if self.webhook_env is not None:
            return (environ or {}).get(self.webhook_env) or None
        return self.webhook

    def as_dict(self) -> dict[str, Any]:
        hook: Any = {"$env": self.webhook_env} if self.webhook_env is not None else self.webhook
        return {"webhook": hook, "allow_private": self.allow_private, "timeout_s": self.timeout_s}

    def public_dict(self) -> dict[str, Any]:
        """`as_dict()` with a literal URL cut to scheme and host: webhook paths often carry the receiver's secret token."""
        out = self.as_dict()
        if self.webhook is not None:
            scheme, _, rest = self.webhook.partition("://")
            out["webhook"] = f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0]}/…"
        return out


@dataclass(frozen=True, kw_only=True)
class Policy:
    """One deployment's monitoring policy; `source` names the file (or `cli`) it came from."""

    deployment: str
    window_spec: WindowSpec
    schedule_s: int | None = None  # None: checks run only by hand
    drift: Mapping[str, Any] | None = None  # the drift thresholds as written (`Thresholds.from_dict` reads them)
    on_drift: OnDrift | None = None
    on_canary_breach: OnCanaryBreach | None = None
    on_canary_better: OnCanaryBetter | None = None
    alerts: AlertConfig | None = None
    source: str = "cli"

    @property
    def window(self) -> Window:
        return self.window_spec.window()

    def thresholds(self) -> Thresholds:
        """The drift thresholds (the defaults where the policy sets none)."""
        return Thresholds.from_dict(self.drift or {})

    def as_dict(self) -> dict[str, Any]:
        """The policy in the file's shape (durations as text); `from_dict` reads it back."""
        out: dict[str, Any] = {"window": self.window_spec.as_dict()}
        if self.schedule_s is not None:
            out["schedule"] = duration_text(self.schedule_s)
        if self.drift is not None:
            out["drift"] = jsonable(self.drift)
        for key in ("on_drift", "on_canary_breach", "on_canary_better", "alerts"):
            section = getattr(self, key)
            if section is not None:
                out[key] = section.as_dict()
        return out

    def public_dict(self) -> dict[str, Any]:
        """`as_dict()` for showing to any reader: a literal webhook URL is cut to its host."""
        out = self.as_dict()
        if self.alerts is not None:
            out["alerts"] = self.alerts.public_dict()
        return out

    @classmethod
    def from_dict(cls, deployment: str, data: Mapping[str, Any], source: str = "cli") -> Policy:
        return parse_policy(deployment, data, source)


ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*WEBHOOK[A-Z0-9_]*")  # the only variables a policy may read


def parse_policies(text: str, source: str) -> list[Policy]:
    """Every deployment's policy in a `monitoring.yaml` text; `source` (the file name) starts every error message."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: an impossible unquoted date such as 2026-13-40
        raise UsageError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise UsageError(f"{source}: no policies", hint="write `deployments:` with one entry per deployment name")
    check_keys(data, {"deployments"}, source)
    deployments = data.get("deployments")
    if not isinstance(deployments, Mapping) or not deployments:
        raise UsageError(f"{source}: deployments: expected a mapping of deployment name to policy", hint="see docs/monitoring-policies.md")
    return [parse_policy(name, body, source) for name, body in deployments.items()]


def _yaml_problem(exc: BaseException) -> str:
    """One line: PyYAML's problem and where (its own text quotes the source over several lines)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)


def parse_policy(deployment: Any, data: Any, source: str) -> Policy:
    """One deployment's policy from its mapping (the YAML entry, or what `Policy.as_dict()` wrote)."""
    where = f"{source}: deployments.{printable(deployment)}"
    _located(where, lambda: check_name(deployment, "deployment name"))
    if data is None:
        data = {}
    check_keys(data, POLICY_KEYS, where)
    schedule = data.get("schedule")
    schedule_s = None if schedule is None else _duration(schedule, f"{where}.schedule")
    if schedule_s is not None and schedule_s < MIN_SCHEDULE_S:
        raise UsageError(f"{where}.schedule: at least 1m between checks, got {schedule!r}")
    return Policy(
        deployment=deployment,
        window_spec=_window("24h" if data.get("window") is None else data["window"], f"{where}.window"),
        schedule_s=schedule_s,
        drift=_drift(data["drift"], f"{where}.drift") if data.get("drift") is not None else None,
        on_drift=_section(data, "on_drift", where, _on_drift),
        on_canary_breach=_section(data, "on_canary_breach", where, _on_breach),
        on_canary_better=_section(data, "on_canary_better", where, _on_better),
        alerts=_section(data, "alerts", where, _alerts),
        source=source,
    )


def duration_text(seconds: int) -> str:
    """The shortest `parse_duration` text for `seconds`: 86400 -> `1d`, 5400 -> `90m`."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _section(data: Mapping[str, Any], key: str, where: str, parse: Callable[[Any, str], T]) -> T | None:
    # `on_canary_better: {}` opts in with the defaults; an absent key (or `~`) leaves the rule off
    if key not in data or data[key] is None:
        return None
    check_keys(data[key], _KEYS[key], f"{where}.{key}")
    return parse(data[key], f"{where}.{key}")


def _on_drift(data: Mapping[str, Any], where: str) -> OnDrift:
    _choice(data.get("action", "retrain"), ("retrain",), f"{where}.action")
    weight = _number(data.get("canary_weight", 10.0), f"{where}.canary_weight", low=0.0, high=100.0, low_open=True)
    return OnDrift(canary_weight=weight, cooldown_s=_duration(data.get("cooldown", "24h"), f"{where}.cooldown"))


def _on_breach(data: Mapping[str, Any], where: str) -> OnCanaryBreach:
    if not {"error_rate", "p99_ms", "quality_delta"} & set(data):
        raise UsageError(f"{where}: name at least one threshold", hint="error_rate, p99_ms or quality_delta")
    error_rate = data.get("error_rate")
    p99 = data.get("p99_ms")
    delta = data.get("quality_delta")
    return OnCanaryBreach(
        error_rate=None if error_rate is None else _number(error_rate, f"{where}.error_rate", low=0.0, high=1.0),
        p99_ms=None if p99 is None else _number(p99, f"{where}.p99_ms", low=0.0, low_open=True),
        quality_delta=None if delta is None else _number(delta, f"{where}.quality_delta", high=0.0,
                                                         hint="the largest loss you accept, as a negative number: -0.02"),  # fmt: skip
        min_requests=_count(data.get("min_requests", 100), f"{where}.min_requests"),
        min_labels=_count(data.get("min_labels", 100), f"{where}.min_labels"),
        cooldown_s=_duration(data.get("cooldown", "1h"), f"{where}.cooldown"),
    )


def _on_better(data: Mapping[str, Any], where: str) -> OnCanaryBetter:
    _choice(data.get("action", "promote"), ("promote",), f"{where}.action")
    return OnCanaryBetter(
        labels=_count(data.get("labels", 500), f"{where}.labels"),
        cooldown_s=_duration(data.get("cooldown", "1h"), f"{where}.cooldown"),
    )


def _alerts(data: Mapping[str, Any], where: str) -> AlertConfig:
    allow = data.get("allow_private", False)
    if not isinstance(allow, bool):
        raise UsageError(f"{where}.allow_private: expected true or false, got {allow!r}")
    timeout = _number(data.get("timeout_s", 5.0), f"{where}.timeout_s", low=0.0, high=60.0, low_open=True)
    hook = data.get("webhook")
    if hook is None:
        return AlertConfig(allow_private=allow, timeout_s=timeout)
    if isinstance(hook, Mapping):
        check_keys(hook, {"$env"}, f"{where}.webhook")
        name = hook.get("$env")
        if not isinstance(name, str) or not name:
            raise UsageError(f"{where}.webhook: `$env` names the environment variable that holds the URL")
        if not ENV_NAME.fullmatch(name):
            raise UsageError(
                f"{where}.webhook: `$env` must name a variable whose name contains WEBHOOK, got {name!r}",
                hint="e.g. CHURN_WEBHOOK_URL: a policy may not read the server's other variables (tokens, keys)",
            )
        return AlertConfig(webhook_env=name, allow_private=allow, timeout_s=timeout)
    if not isinstance(hook, str):
        raise UsageError(f"{where}.webhook: expected a URL or {{$env: NAME}}, got {hook!r}")
    _located(f"{where}.webhook", lambda: check_url_syntax(hook, allow))
    return AlertConfig(webhook=hook, allow_private=allow, timeout_s=timeout)


_KEYS = {"on_drift": ON_DRIFT_KEYS, "on_canary_breach": BREACH_KEYS, "on_canary_better": BETTER_KEYS, "alerts": ALERT_KEYS}


def _window(raw: Any, where: str) -> WindowSpec:
    if isinstance(raw, str):
        spec = WindowSpec(last=raw)
    else:
        check_keys(raw, WINDOW_KEYS, where)
        if not raw:
            raise UsageError(f"{where}: empty window", hint="write `24h`, {since: ..., until: ...} or {last_rows: N}")
        rows = raw.get("last_rows")
        spec = WindowSpec(
            last=_text(raw.get("last"), f"{where}.last"),
            since=_moment_text(raw.get("since"), f"{where}.since"),
            until=_moment_text(raw.get("until"), f"{where}.until"),
            last_rows=None if rows is None else _count(rows, f"{where}.last_rows"),
        )
    _located(where, spec.window)  # Window's own checks: last xor since/until, since < until, valid times
    return spec


def _drift(raw: Any, where: str) -> dict[str, Any]:
    """The thresholds section as written, validated by `Thresholds.from_dict`.

    Kept as written rather than expanded to every default, so a stored policy follows the defaults of
    the mlbox that runs it; each check result records the thresholds it actually applied.
    """
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where}: expected a mapping of thresholds, got {type(raw).__name__}")
    _located(where, lambda: Thresholds.from_dict(raw))
    return jsonable(raw)  # type: ignore[no-any-return]


def _located(where: str, fn: Callable[[], T]) -> T:
    """Run a check whose UsageError does not know where in the file it is, and prefix the key path."""
    try:
        return fn()
    except UsageError as exc:
        raise type(exc)(f"{where}: {exc.message}", hint=exc.hint) from None


def _duration(raw: Any, where: str) -> int:
    if not isinstance(raw, str):
        raise UsageError(f"{where}: expected a duration such as 90s, 15m, 12h, 30d, got {raw!r}")
    return _located(where, lambda: parse_duration(raw))


def _number(raw: Any, where: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
            hint: str | None = None) -> float:  # fmt: skip
    ok = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)
    if ok and low is not None:
        ok = raw > low if low_open else raw >= low
    if ok and high is not None:
        ok = raw <= high
    if not ok:
        if low is not None and high is not None and not low_open:
            bounds = f"between {low:g} and {high:g}"
        else:
            bounds = f"{'above' if low_open else 'at least'} {low:g}" if low is not None else ""
            bounds += (" and " if bounds else "") + f"at most {high:g}" if high is not None else ""
        raise UsageError(f"{where}: expected a number{' ' + bounds if bounds else ''}, got {raw!r}", hint=hint)
    return float(raw)


def _count(raw: Any, where: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise UsageError(f"{where}: expected a whole number of at least 1, got {raw!r}")
    return raw


def _choice(raw: Any, choices: tuple[str, ...], where: str) -> None:
    if raw not in choices:
        raise UsageError(f"{where}: {raw!r} is not one of {', '.join(choices)}")


def _text(raw: Any, where: str) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise UsageError(f"{where}: expected text, got {raw!r}")
    return raw


def _moment_text(raw: Any, where: str) -> str | None:
    # YAML reads an unquoted 2026-11-01 as a date and 2026-11-01T00:00:00Z as a datetime; keep the ISO text
    if isinstance(raw, datetime | date):
        return raw.isoformat()
    text = _text(raw, where)
    if text is not None:
        _located(where, lambda: Window.parse(since=text))  # a bad time is named by its own key
    return text


def jsonable(value: Any) -> Any:
    """A JSON-able copy of nested mappings and sequences (the frozen policy must not share mutable state)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
