"""`mlbox runs` and `mlbox models` on a box holding two trained and registered versions (churn:1, churn:2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from mlbox.errors import Conflict, PermissionDenied
from mlbox.flavors.signature import Signature
from mlbox.store.artifacts import file_sha256

from ..conftest import OS_USER
from .conftest import Project


def mlbox(project: Project, cli_run, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return cli_run("--home", str(project.home), *args, env=env)


def test_runs_list(registered: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = mlbox(registered, cli_run, "--json", "runs", "list")
    assert result.exit_code == 0, result.stderr
    rows = result.json()
    v1, v2 = registered.box.registry.get("churn:1"), registered.box.registry.get("churn:2")
    assert [r["run"] for r in rows] == [v2.run_id, v1.run_id]  # newest first
    for row in rows:
        assert row["experiment"] == "churn" and row["status"] == "finished" and row["device"] == "cpu"
        assert {"roc_auc", "accuracy", "log_loss", "onnx_max_abs_diff"} <= set(row)
        assert not [k for k in row if k.startswith(("train_", "valid_"))]  # step series are not headline metrics
    assert rows[1]["roc_auc"] == round(v1.metrics["roc_auc"], 4)
    assert mlbox(registered, cli_run, "--json", "runs", "list", "-n", "1").json()[0]["run"] == v2.run_id
    assert mlbox(registered, cli_run, "--json", "runs", "list", "--status", "failed").json() == []
    assert mlbox(registered, cli_run, "--json", "runs", "list", "--experiment", "other").json() == []
    table = mlbox(registered, cli_run, "runs", "list")
    assert table.exit_code == 0 and v1.run_id in table.stdout and "finished" in table.stdout


def test_runs_show(registered: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    v1 = registered.box.registry.get("churn:1")
    assert v1.run_id is not None
    result = mlbox(registered, cli_run, "--json", "runs", "show", v1.run_id[:6])  # a unique prefix is enough
    assert result.exit_code == 0, result.stderr
    run = result.json()
    assert run["id"] == v1.run_id and run["status"] == "finished" and run["device"] == "cpu"
    assert run["params"]["n_estimators"] == 20 and run["params"]["max_depth"] == 3 and run["params"]["flavor"] == "xgboost"
    assert run["tags"]["device_reason"].startswith("auto: falling back to CPU")
    assert run["metrics"]["roc_auc"] == v1.metrics["roc_auc"]
    assert run["dataset_fingerprint"] == v1.lineage["dataset_fingerprint"]
    assert run["env_hash"] == v1.lineage["env_hash"] and run["environment"]["packages"]["numpy"]
    assert run["feature_views"] == ["customer_profile@1", "usage@1"]
    assert "code_rev" in run and "code_dirty" in run
    (artifact,) = run["artifacts"]
    assert artifact["name"] == "native/model.ubj" and artifact["sha256"] == v1.artifacts["native/model.ubj"]["sha256"]
    stored = registered.box.artifacts.path(artifact["sha256"])
    assert file_sha256(stored) == artifact["sha256"] and stored.stat().st_size == artifact["size"]
    plain = mlbox(registered, cli_run, "runs", "show", v1.run_id)
    assert plain.exit_code == 0 and artifact["sha256"] in plain.stdout and "device_reason" in plain.stdout
    missing = mlbox(registered, cli_run, "runs", "show", "0000000000")
    assert missing.exit_code == 3 and missing.stderr.startswith("error: no run")


def test_runs_compare(registered: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    a, b = (registered.box.registry.get(f"churn:{n}").run_id or "" for n in (1, 2))
    result = mlbox(registered, cli_run, "--json", "runs", "compare", a, b)
    assert result.exit_code == 0, result.stderr
    rows = {row[""]: row for row in result.json()}
    assert (rows["max_depth"][a[:8]], rows["max_depth"][b[:8]]) == (3, 2)
    assert rows["n_estimators"][a[:8]] == rows["n_estimators"][b[:8]] == 20
    assert rows["status"][a[:8]] == rows["status"][b[:8]] == "finished"
    assert isinstance(rows["roc_auc"][a[:8]], float) and isinstance(rows["roc_auc"][b[:8]], float)
    table = mlbox(registered, cli_run, "runs", "compare", a, b)
    assert table.exit_code == 0 and a[:8] in table.stdout and b[:8] in table.stdout and "max_depth" in table.stdout


def test_models_list_and_show(registered: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    listed = mlbox(registered, cli_run, "--json", "models", "list")
    assert listed.exit_code == 0, listed.stderr
    rows = listed.json()
    assert [r["model"] for r in rows] == ["churn:1", "churn:2"]
    assert all(r["flavor"] == "xgboost" and r["aliases"] == "" and r["archived"] is False for r in rows)
    assert rows[0]["roc_auc"] == registered.box.registry.get("churn:1").metrics["roc_auc"]

    shown = mlbox(registered, cli_run, "--json", "models", "show", "churn:1")
    assert shown.exit_code == 0, shown.stderr
    v = shown.json()
    assert (v["name"], v["version"], v["flavor"], v["task"]) == ("churn", 1, "xgboost", "classification")
    assert v["created_by"] == OS_USER and v["onnx_max_abs_diff"] <= v["onnx_tolerance"]
    assert {c["name"] for c in v["signature"]["columns"]} >= {"plan", "late_payments"}
    assert set(v["artifacts"]) == {"model.onnx", "native/model.ubj"}
    for meta in v["artifacts"].values():
        assert file_sha256(registered.box.artifacts.path(meta["sha256"])) == meta["sha256"]
    lineage = v["lineage"]
    assert lineage["run_id"] and lineage["batches"] and lineage["feature_views"] == ["customer_profile@1", "usage@1"]
    assert lineage["spec"]["flavor"] == "xgboost"
    latest = mlbox(registered, cli_run, "--json", "models", "show", "churn").json()
    assert latest["version"] == 2
    plain = mlbox(registered, cli_run, "models", "show", "churn:1")
    assert plain.exit_code == 0 and "signature" in plain.stdout and "lineage" in plain.stdout
    assert v["artifacts"]["model.onnx"]["sha256"] in plain.stdout
    missing = mlbox(registered, cli_run, "models", "show", "churn:9")
    assert missing.exit_code == 3 and missing.stderr.startswith("error: no model version churn:9")


def test_models_promote_is_compare_and_set(registered: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    first = mlbox(registered, cli_run, "models", "promote", "churn:1", "--to", "production")
    assert first.exit_code == 0, first.stderr
    assert "churn:1 is now production" in first.stdout
    stale = mlbox(registered, cli_run, "models", "promote", "churn:2", "--to", "production", "--expect", "3")
    assert stale.exit_code == Conflict.exit_code == 4
    lines = stale.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: churn:production is now 1, not 3 as expected")
    assert registered.box.registry.holder("churn", "production") == 1
    fresh = mlbox(registered, cli_run, "--json", "models", "promote", "churn:2", "--to", "production", "--expect", "1")
    assert fresh.exit_code == 0 and fresh.json()["aliases"] == "production"
    assert registered.box.registry.holder("churn", "production") == 2
    unset = mlbox(registered, cli_run, "models", "promote", "churn:1", "--to", "staging", "--expect", "2")
    assert unset.exit_code == 4 and "is now unset, not 2" in unset.stderr
    promotions = [e for e in registered.box.audit.entries(action="models.promote")]
    assert [(e.target, e.details["from"]) for e in reversed(promotions)] == [("churn:1", None), ("churn:2", 1)]
    assert {e.actor for e in promotions} == {OS_USER}


def test_models_diff(registered: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = mlbox(registered, cli_run, "--json", "models", "diff", "churn:1", "churn:2")
    assert result.exit_code == 0, result.stderr
    d = result.json()
    assert (d["a"], d["b"]) == ("churn:1", "churn:2")
    assert d["params"] == {"max_depth": [3, 2]}
    assert d["features_removed"] == ["late_payments"] and d["features_added"] == [] and d["features_changed"] == []
    v1, v2 = registered.box.registry.get("churn:1"), registered.box.registry.get("churn:2")
    assert d["metrics"]["roc_auc"] == [v1.metrics["roc_auc"], v2.metrics["roc_auc"]]
    assert d["flavor"] == ["xgboost", "xgboost"]
    assert d["dataset"] == [v1.lineage["dataset_fingerprint"], v2.lineage["dataset_fingerprint"]]
    table = mlbox(registered, cli_run, "models", "diff", "churn:1", "churn:2")
    assert table.exit_code == 0 and "features removed: late_payments" in table.stdout and "param max_depth" in table.stdout


def test_models_export(registered: Project, cli_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out.onnx"
    result = mlbox(registered, cli_run, "models", "export", "churn:1", str(out))
    assert result.exit_code == 0, result.stderr
    v = registered.box.registry.get("churn:1")
    assert file_sha256(out) == v.artifacts["model.onnx"]["sha256"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    spec = v.lineage["spec"]["data"]
    frame = registered.box.features.training_set(registered.home / spec["labels"], spec["features"], v.lineage["snapshot"],
                                                 timestamp=spec["timestamp"]).frame.head(50)  # fmt: skip
    (probabilities,) = sess.run(None, {sess.get_inputs()[0].name: Signature.from_dict(v.signature).encode(frame)})
    assert probabilities.shape == (50, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    native = mlbox(registered, cli_run, "--json", "models", "export", "churn:2", str(tmp_path / "native"), "--format", "native")
    assert native.exit_code == 0, native.stderr
    assert native.json() == {"files": [str(tmp_path / "native" / "model.ubj")]}
    assert file_sha256(tmp_path / "native" / "model.ubj") == registered.box.registry.get("churn:2").artifacts["native/model.ubj"]["sha256"]
    bad = mlbox(registered, cli_run, "models", "export", "churn:1", str(tmp_path / "x"), "--format", "pickle")
    assert bad.exit_code == 2 and "unknown export format 'pickle'" in bad.stderr


def test_models_archive(registered: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    registered.box.registry.set_alias("churn:1", "staging", OS_USER)
    result = mlbox(registered, cli_run, "--json", "models", "archive", "churn:1")
    assert result.exit_code == 0, result.stderr
    assert result.json()["archived"] is True and result.json()["aliases"] == ""
    assert registered.box.registry.holder("churn", "staging") is None
    assert [r["model"] for r in mlbox(registered, cli_run, "--json", "models", "list").json()] == ["churn:2"]
    assert [r["model"] for r in mlbox(registered, cli_run, "--json", "models", "list", "--archived").json()] == ["churn:1", "churn:2"]
    again = mlbox(registered, cli_run, "models", "promote", "churn:1", "--to", "staging")
    assert again.exit_code == 4 and "archived" in again.stderr
    (entry,) = registered.box.audit.entries(action="models.archive")
    assert entry.target == "churn:1" and entry.details == {"aliases_removed": ["staging"]} and entry.actor == OS_USER


def test_viewer_token_can_read_but_not_train_or_promote(registered: Project, cli_run) -> None:  # type: ignore[no-untyped-def]
    _, token = registered.box.identity.create_token(OS_USER, OS_USER, "viewer", 3600)
    env = {"MLBOX_TOKEN": token}
    spec = str(registered.home / "v1.yaml")
    runs_before = registered.count("runs")
    trained = mlbox(registered, cli_run, "train", spec, env=env)
    assert trained.exit_code == PermissionDenied.exit_code == 5
    assert trained.stderr.startswith("error:") and "train.run" in trained.stderr
    assert registered.count("runs") == runs_before
    promoted = mlbox(registered, cli_run, "models", "promote", "churn:1", "--to", "production", env=env)
    assert promoted.exit_code == 5 and "models.promote" in promoted.stderr
    assert registered.box.registry.holder("churn", "production") is None
    archived = mlbox(registered, cli_run, "models", "archive", "churn:1", env=env)
    assert archived.exit_code == 5 and registered.box.registry.get("churn:1").archived_at is None
    assert mlbox(registered, cli_run, "--json", "models", "list", env=env).exit_code == 0
    assert mlbox(registered, cli_run, "--json", "runs", "list", env=env).exit_code == 0
