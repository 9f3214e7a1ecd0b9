"""Gates: a failing run is recorded (and registered) but never promoted, and `mlbox train` exits non-zero."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlbox.train.metrics import Gate, check_gate

from ..conftest import OS_USER
from .conftest import Project


def incumbent(project: Project, tmp_path: Path, metrics: dict[str, float]) -> str:
    """Register a version carrying `metrics` and make it production (the gate reads only its metrics)."""
    native = tmp_path / f"incumbent-{len(project.box.registry.versions())}.bin"
    native.write_bytes(native.name.encode())
    v = project.box.registry.register(
        "churn",
        files={"native/model.bin": native},
        flavor="xgboost",
        task="classification",
        signature={"columns": [], "task": "classification", "target": "churned", "classes": [0, 1]},
        reference_stats={},
        metrics=metrics,
        lineage={},
        run_id=None,
        onnx_max_abs_diff=0.0,
        onnx_tolerance=1e-4,
        actor=OS_USER,
    )
    project.box.registry.set_alias(v.ref, "production", OS_USER)
    return v.ref


def test_failing_gate_records_registers_and_promotes_nothing(churn: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    spec = churn.fast_spec("strict.yaml", gate={"metric": "roc_auc", "min": 0.99})
    result = cli_run("--home", str(churn.home), "train", str(spec), "--register", "--promote-if-gate", "staging")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gate failed: roc_auc ") and "< min 0.99" in lines[0]
    assert "gate failed" in result.stdout and "registered churn:1" in result.stdout
    (run,) = churn.box.tracking.runs()
    assert run.status == "finished" and run.tags["gate"] == "failed" and "< min 0.99" in run.tags["gate_reasons"]
    (version,) = churn.box.registry.versions("churn")
    assert version.run_id == run.id and version.metrics["gate_passed"] is False and version.aliases == []
    assert churn.box.registry.holder("churn", "staging") is None
    assert not [e for e in churn.box.audit.entries() if e.action == "models.promote"]


def test_passing_gate_promotes(churn: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    spec = churn.fast_spec("lenient.yaml", gate={"metric": "roc_auc", "min": 0.5})
    result = cli_run("--home", str(churn.home), "--json", "train", str(spec), "--promote-if-gate", "staging")
    assert result.exit_code == 0, result.stderr
    out = result.json()
    assert out["model"] == "churn:1" and out["promoted"] == "staging" and out["gate"]["passed"] is True
    assert out["device"] == "cpu" and out["onnx_max_abs_diff"] <= 1e-4
    assert churn.box.registry.holder("churn", "staging") == 1
    assert churn.box.registry.holder("churn", "production") is None
    (promote,) = [e for e in churn.box.audit.entries() if e.action == "models.promote"]
    assert promote.actor == OS_USER and promote.target == "churn:1"


def test_must_beat_compares_with_the_production_holder(churn: Project, tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    spec = churn.fast_spec("beat.yaml", gate={"metric": "roc_auc", "min": 0.5, "must_beat": "production"})
    strong = incumbent(churn, tmp_path, {"roc_auc": 0.999})
    result = cli_run("--home", str(churn.home), "train", str(spec), "--register", "--promote-if-gate", "staging")
    assert result.exit_code == 1
    assert "does not beat production 0.999" in result.stderr
    assert churn.box.registry.holder("churn", "staging") is None
    assert churn.box.registry.get("churn:production").ref == strong
    assert churn.box.tracking.runs()[0].tags["gate"] == "failed"

    weak = incumbent(churn, tmp_path, {"roc_auc": 0.55})
    result = cli_run("--home", str(churn.home), "--json", "train", str(spec), "--register", "--promote-if-gate", "staging")
    assert result.exit_code == 0, result.stderr
    reasons = result.json()["gate"]["reasons"]
    assert any("beats production 0.55" in r for r in reasons), reasons
    assert churn.box.registry.holder("churn", "staging") == int(result.json()["model"].split(":")[1])
    assert churn.box.registry.get("churn:production").ref == weak  # promote-if-gate staging leaves production alone


@pytest.mark.parametrize(
    ("gate", "metrics", "incumbent_metrics", "passed", "reason"),
    [
        (None, {"roc_auc": 0.1}, None, True, "no gate"),
        (Gate("roc_auc", min=0.8), {"roc_auc": 0.8}, None, True, "roc_auc 0.8 >= min 0.8"),
        (Gate("roc_auc", min=0.8), {"roc_auc": 0.79}, None, False, "roc_auc 0.79 < min 0.8"),
        (Gate("log_loss", max=0.3), {"log_loss": 0.31}, None, False, "log_loss 0.31 > max 0.3"),
        (Gate("roc_auc", min=0.5), {"roc_auc": float("nan")}, None, False, "roc_auc was not computed"),
        (Gate("roc_auc", must_beat="production"), {"roc_auc": 0.7}, None, True, "no production model with roc_auc to beat"),
        (Gate("roc_auc", must_beat="production"), {"roc_auc": 0.7}, {"roc_auc": 0.7}, False, "does not beat production"),
        (Gate("log_loss", must_beat="staging"), {"log_loss": 0.3}, {"log_loss": 0.2}, False, "does not beat staging 0.2"),
        (Gate("log_loss", must_beat="staging"), {"log_loss": 0.3}, {"log_loss": 0.4}, True, "beats staging 0.4"),
        (Gate("rmse", must_beat="production"), {"rmse": 10.0}, {"rmse": 12.0}, True, "beats production 12"),
    ],
)
def test_check_gate(
    gate: Gate | None, metrics: dict[str, float], incumbent_metrics: dict[str, float] | None, passed: bool, reason: str
) -> None:
    result = check_gate(gate, metrics, incumbent_metrics)
    assert result.passed is passed
    assert any(reason in r for r in result.reasons), result.reasons
