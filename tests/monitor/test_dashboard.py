"""The Grafana dashboard in templates/: importable, and every query reads a metric mlbox exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mlbox.project import list_templates

DASHBOARD = Path(__file__).resolve().parents[2] / "templates" / "grafana" / "mlbox-dashboard.json"
DATASOURCE = "${DS_PROMETHEUS}"
# the list in the brief of issue 11, used until mlbox.serve.metrics.metric_names() exists
BRIEF_METRICS = {
    "mlbox_requests_total", "mlbox_request_latency_seconds", "mlbox_requests_in_flight", "mlbox_prediction_log_backlog",
    "mlbox_prediction_log_dropped", "mlbox_prediction_log_written_total", "mlbox_shadow_predictions_total",
    "mlbox_shadow_disagreements_total", "mlbox_shadow_errors_total", "mlbox_model_info", "mlbox_deployment_revision",
    "mlbox_jobs", "mlbox_drift_score", "mlbox_drift_detected", "mlbox_drift_share", "mlbox_quality", "mlbox_label_coverage",
    "mlbox_ab_verdict", "mlbox_monitor_last_check_timestamp_seconds",
}  # fmt: skip
# series labelled by deployment: each of their selectors must filter on it (the $deployment variable)
BY_DEPLOYMENT = {
    "mlbox_requests_total", "mlbox_request_latency_seconds", "mlbox_shadow_predictions_total",
    "mlbox_shadow_disagreements_total", "mlbox_shadow_errors_total", "mlbox_model_info", "mlbox_deployment_revision",
    "mlbox_drift_score", "mlbox_drift_detected", "mlbox_drift_share", "mlbox_quality", "mlbox_label_coverage",
    "mlbox_ab_verdict", "mlbox_monitor_last_check_timestamp_seconds",
}  # fmt: skip
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def exported_metrics() -> set[str]:
    from mlbox.serve import metrics

    metric_names = getattr(metrics, "metric_names", None)
    return BRIEF_METRICS if metric_names is None else {str(n) for n in metric_names()}


def base_name(name: str) -> str:
    """The family a series belongs to: a histogram's `_bucket`/`_sum`/`_count` series are the histogram."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


def is_exported(name: str, names: set[str]) -> bool:
    # prometheus_client names a counter's family without `_total`; either spelling may be listed
    return any(n in names for n in (name, base_name(name), name.removesuffix("_total"), f"{name}_total"))


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label matchers, ranges and
    grouping clauses, that are neither a function call nor a keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if m.group(0) in PROMQL_WORDS or text[m.end() :].lstrip().startswith("("):
            continue
        found.add(m.group(0))
    return found


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, its label matchers or "") for each metric selector in `expr`."""
    return [(m.group(1), m.group(2) or "") for m in re.finditer(r"\b(mlbox_[A-Za-z0-9_]+)\s*(\{[^}]*\})?", expr)]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # a collapsed row keeps its panels inside
    return out


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    return str(query.get("query", "")) if isinstance(query, dict) else str(query or variable.get("definition", ""))


def test_the_metric_name_finder() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, variant) (rate(mlbox_request_latency_seconds_bucket{deployment=~"$d",'
        ' route="a{b}"}[$__rate_interval]))) / on(variant) group_left foo_total offset 5m + 1e3 * time() - bar'
    )
    assert metric_names_in(expr) == {"mlbox_request_latency_seconds_bucket", "foo_total", "bar"}
    assert metric_names_in('topk(20, mlbox_drift_score{test="js"}) == 1') == {"mlbox_drift_score"}
    assert is_exported("mlbox_request_latency_seconds_bucket", BRIEF_METRICS)
    assert not is_exported("mlbox_request_latency_seconds_bucket", {"mlbox_requests_total"})
    assert not is_exported("mlbox_drift_scores", BRIEF_METRICS)


def test_every_query_reads_a_metric_mlbox_exports(dashboard: dict[str, Any]) -> None:
    names = exported_metrics()
    exprs = queries(dashboard)
    exprs += [variable_query(v) for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    used: set[str] = set()
    for expr in exprs:
        if expr.lstrip().startswith("label_values("):
            expr = expr.split("(", 1)[1].rsplit(",", 1)[0]  # label_values(selector, label): the selector
        found = metric_names_in(expr)
        assert found, f"no metric in {expr!r}"
        unknown = [n for n in found if not is_exported(n, names)]
        assert not unknown, f"{expr!r} reads {unknown}, which mlbox does not export"
        used |= {base_name(n) for n in found}
    # the panels the issue asks for: traffic, latency, errors, drift, quality, coverage, A/B, the log, shadow
    wanted = {"mlbox_requests_total", "mlbox_request_latency_seconds", "mlbox_drift_score", "mlbox_drift_share",
              "mlbox_drift_detected", "mlbox_quality", "mlbox_label_coverage", "mlbox_ab_verdict",
              "mlbox_prediction_log_backlog", "mlbox_prediction_log_dropped", "mlbox_shadow_disagreements_total"}  # fmt: skip
    assert wanted <= used, f"no panel reads {sorted(wanted - used)}"


def test_queries_follow_the_deployment_variable(dashboard: dict[str, Any]) -> None:
    for expr in queries(dashboard):
        for metric, matchers in selectors(expr):
            if base_name(metric) in BY_DEPLOYMENT:
                assert re.search(r'deployment\s*(=~"\$deployment"|="")', matchers), f"{metric} in {expr!r}"
    # errors: the request counter's status label is the HTTP status as text ("200", "429", "404", "500")
    assert any('status!="200"' in e for e in queries(dashboard))


def test_importable_with_a_datasource_input_and_the_deployment_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36 and dashboard["title"] and dashboard["uid"]
    assert {"name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}.items() <= dashboard["__inputs"][0].items()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    deployment = variables["deployment"]
    assert deployment["type"] == "query" and deployment["datasource"]["uid"] == DATASOURCE
    assert re.fullmatch(r"label_values\(\s*mlbox_requests_total\s*,\s*deployment\s*\)", variable_query(deployment))
    assert deployment["includeAll"] and deployment["multi"]


def test_every_panel_has_a_title_a_target_and_a_place(dashboard: dict[str, Any]) -> None:
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel.get("title"), panel
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"{panel['title']!r} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == DATASOURCE
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"] and target["datasource"]["uid"] == DATASOURCE


def test_not_offered_as_a_project_template() -> None:
    # templates/ also holds `mlbox init` projects: a folder without mlbox.toml is not one of them
    assert "grafana" not in list_templates() and list_templates()
