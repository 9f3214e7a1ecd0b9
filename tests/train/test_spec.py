"""Training specs are checked completely before training: one UsageError naming the problem, no run recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlbox.errors import UsageError, ValidationError
from mlbox.train.metrics import Gate
from mlbox.train.spec import load_spec, parse_spec

from ..conftest import run_mlbox
from .conftest import Project

VALID: dict[str, Any] = {
    "experiment": "churn",
    "task": "classification",
    "data": {"labels": "labels.csv", "features": ["usage:*"], "timestamp": "event_ts"},
    "target": "churned",
    "flavor": "xgboost",
    "metrics": ["roc_auc"],
    "gate": {"metric": "roc_auc", "min": 0.5},
}


def changed(**changes: Any) -> dict[str, Any]:
    """VALID with `changes`; a value of None deletes the key."""
    raw = {**VALID, **changes}
    return {k: v for k, v in raw.items() if v is not None}


def test_valid_spec_parses_with_defaults() -> None:
    spec = parse_spec(VALID)
    assert (spec.flavor, spec.device, spec.seed, spec.split.method) == ("xgboost", "auto", 42, "random")
    assert spec.data.features == ("usage:*",) and spec.metrics == ("roc_auc",)
    assert spec.gate == Gate("roc_auc", 0.5, None, None)
    assert spec.model_name == "churn"
    assert parse_spec(changed(metrics=None)).metrics == ("roc_auc", "accuracy", "log_loss")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (changed(epochs=5), "unknown key 'epochs'"),
        (changed(data={**VALID["data"], "label": "x.csv"}), "data: unknown key 'label'"),
        (changed(split={"method": "time", "holdout": 0.2}), "split: unknown key 'holdout'"),
        (changed(gate={"metric": "roc_auc", "minimum": 0.8}), "gate: unknown key 'minimum'"),
        (changed(target=None), "missing required key 'target'"),
        (changed(flavor=None), "missing required key 'flavor'"),
        (changed(data=None), "missing required key 'data'"),
        (changed(flavor="lightgbm"), "unknown flavor 'lightgbm'"),
        (changed(task="ranking"), "task must be classification or regression"),
        (changed(metrics=["roc_auc", "auc"]), "unknown classification metric 'auc'"),
        (changed(metrics=["rmse"]), "unknown classification metric 'rmse'"),
        (changed(gate={"metric": "r2", "min": 0.5}), "unknown classification metric 'r2'"),
        (changed(gate={"metric": "roc_auc", "must_beat": "prod"}), "must_beat 'prod'"),
        (changed(device="gpu"), "device must be auto, cpu or cuda, got 'gpu'"),
        (changed(estimator="sklearn.linear_model.LogisticRegression"), "estimator is only for flavor sklearn"),
        (changed(data={**VALID["data"], "path": "train.parquet"}), "either labels + features"),
        (changed(data={"timestamp": "event_ts"}), "either labels + features"),
        (changed(data={"labels": "labels.csv"}), "data.features lists no features"),
        (changed(split={"method": "stratified"}), "split.method must be time, random or kfold"),
        (changed(split={"test_size": 1.5}), "split sizes"),
        (changed(split={"method": "kfold", "folds": 1}), "folds >= 2"),
        (changed(params=[1, 2]), "params must be a mapping"),
        (changed(data=["labels.csv"]), "data: expected a mapping"),
    ],
)
def test_invalid_spec_is_one_usage_error(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_spec(raw, "train.yaml")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_lists_the_allowed_ones() -> None:
    with pytest.raises(UsageError) as info:
        parse_spec(changed(epochs=5))
    assert info.value.hint is not None and "early_stopping_rounds" in info.value.hint


def test_gate_metric_is_always_computed() -> None:
    """A gate on a metric the spec does not list is refused up front, or the metric is computed.

    Otherwise the gate can never pass: training runs to the end and the gate then fails
    with "f1 was not computed".
    """
    raw = changed(metrics=["roc_auc", "accuracy"], gate={"metric": "f1", "min": 0.1})
    try:
        spec = parse_spec(raw)
    except UsageError as exc:
        assert "f1" in str(exc)
        return
    assert "f1" in spec.metrics, f"gate metric f1 is not among the computed metrics {spec.metrics}"


# load_spec -------------------------------------------------------------------


def test_load_spec_reads_yaml_relative_to_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "specs" / "train.yaml"
    path.parent.mkdir()
    path.write_text("experiment: churn\ntask: classification\ndata: {path: data.csv}\ntarget: y\nflavor: sklearn\n")
    spec = load_spec(path)
    assert spec.base_dir == path.parent.resolve() and spec.data.path == "data.csv"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "not found"),
        ("experiment: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "a training spec is a mapping"),
        ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),  # safe_load: no code execution
        ("experiment: churn\nflavour: xgboost\n", "unknown key 'flavour'"),
    ],
)
def test_load_spec_errors(tmp_path: Path, text: str | None, fragment: str) -> None:
    path = tmp_path / "train.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError, match=fragment):
        load_spec(path)


# nothing is recorded for an invalid spec ---------------------------------------------


def test_cli_invalid_spec_is_one_error_line_and_no_run(churn: Project) -> None:
    bad = churn.spec("bad.yaml", epochs=5)
    result = run_mlbox(["--home", str(churn.home), "train", str(bad), "--register"], cwd=churn.home)
    assert result.returncode == UsageError.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "unknown key 'epochs'" in lines[0]
    assert churn.count("runs") == 0 and churn.count("model_versions") == 0


def test_cli_missing_target_column_fails_before_a_run(churn: Project) -> None:
    spec = churn.fast_spec("bad.yaml", target="churn_flag")
    result = run_mlbox(["--home", str(churn.home), "train", str(spec), "--register"], cwd=churn.home)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: target column 'churn_flag' is not in the training data")
    assert churn.count("runs") == 0 and churn.count("experiments") == 0


def test_missing_target_column_in_a_file_fails_before_a_run(churn: Project, tmp_path: Path) -> None:
    pd.DataFrame({"a": range(20), "b": [i % 3 for i in range(20)], "y": [i % 2 for i in range(20)]}).to_csv(
        tmp_path / "data.csv", index=False
    )
    spec = parse_spec(
        {"experiment": "plain", "task": "classification", "data": {"path": "data.csv"}, "target": "label", "flavor": "sklearn"},
        base_dir=tmp_path,
    )
    with pytest.raises(ValidationError, match="target column 'label'"):
        churn.train(spec)
    assert churn.count("runs") == 0


def test_time_split_without_a_timestamp_fails_before_a_run(churn: Project, tmp_path: Path) -> None:
    pd.DataFrame({"a": range(20), "y": [i % 2 for i in range(20)]}).to_csv(tmp_path / "data.csv", index=False)
    spec = parse_spec(
        {"experiment": "plain", "task": "classification", "data": {"path": "data.csv"}, "target": "y",
         "flavor": "sklearn", "split": {"method": "time"}},
        base_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(UsageError, match="needs a timestamp column"):
        churn.train(spec)
    assert churn.count("runs") == 0


@pytest.mark.parametrize(
    ("flavor", "params", "fragment"),
    [
        ("sklearn", {"nonsense": 1}, "unknown parameter 'nonsense'"),
        ("xgboost", {"objective": "reg:squarederror"}, "parameter 'objective' is set by mlbox"),
    ],
)
def test_invalid_params_fail_before_a_run(churn: Project, flavor: str, params: dict[str, Any], fragment: str) -> None:
    """docs/training.md: every key is checked before training starts; a typo in params records no failed run."""
    spec = churn.spec("bad.yaml", flavor=flavor, params=params)
    with pytest.raises(UsageError, match=fragment):
        churn.train(spec)
    runs = churn.box.db.query("SELECT status, error FROM runs")
    assert runs == [], f"an invalid spec left a run behind: {runs}"


def test_cli_unknown_promote_alias_fails_before_training(churn: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    """`--promote-if-gate prod` is a typo for production: refused before a model is trained and registered."""
    spec = churn.fast_spec()
    result = cli_run("--home", str(churn.home), "train", str(spec), "--promote-if-gate", "prod")
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and "prod" in result.stderr
    assert churn.count("model_versions") == 0, "the model was registered before the alias was checked"
    assert churn.count("runs") == 0, "the model was trained before the alias was checked"
