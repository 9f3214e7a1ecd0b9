"""`mlbox quickstart DIR` through the real console script: every step, and the box it leaves behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlbox.box import Box
from mlbox.config import load_settings

from ..conftest import OS_USER, run_mlbox

# docs/cli.md: doctor, feature definitions, ingest, a point-in-time training set, materialization,
# an online lookup, training two candidates and registering both, promoting the better one to
# staging, serving (the last half of the traffic shifted), a drift check and an A/B verdict on the
# labelled traffic, users and tokens (a viewer reads the protected email masked), where personal data
# lives (the privacy report), audit verification, a backup, and the erasure of one customer (a dry run, then
# the erasure and its signed certificate, written beside the project).
STEPS = ["init", "doctor", "features apply", "features ingest", "training set", "materialize", "online lookup",
         "train", "promote", "deploy", "serve", "drift check", "A/B verdict", "auth", "privacy report", "audit verify", "backup", "erasure", "encryption"]  # fmt: skip


@pytest.mark.slow
def test_quickstart(tmp_path: Path) -> None:
    root = tmp_path / "qs"
    result = run_mlbox(["quickstart", str(root)], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"mlbox quickstart in {root}"
    steps = [re.match(r"✓ (\S+(?: \S+)?)\s{2,}.*\((\d+\.\d\d)s\)$", line) for line in lines[1:-1]]
    assert all(steps), lines
    assert [m.group(1) for m in steps if m] == STEPS
    train_line = next(line for line in lines if line.startswith("✓ train "))
    assert "churn:1 (xgboost)" in train_line and "churn:2 (sklearn LogisticRegression)" in train_line
    promote_line = next(line for line in lines if line.startswith("✓ promote "))
    assert re.search(r"churn:[12] is staging \(best roc_auc 0\.\d{3}\)", promote_line)
    serve_line = next(line for line in lines if line.startswith("✓ serve "))
    assert "mlbox serve over TLS (self-signed, tls/cert.pem)" in serve_line
    split = re.search(r"answered 400 token-authenticated requests \(the last 200 shifted\): canary (\d+) \(\d+%\), primary (\d+)", serve_line)
    assert split and int(split.group(1)) + int(split.group(2)) == 400 and 30 <= int(split.group(1)) <= 130
    drift_line = next(line for line in lines if line.startswith("✓ drift check "))
    assert re.search(r"primary churn:1: DRIFT over \d+ rows, [3-9]/9 features drifted \(.*monthly_charges", drift_line)
    ab_line = next(line for line in lines if line.startswith("✓ A/B verdict "))
    assert "400 labels matched; accuracy canary 0." in ab_line
    assert re.search(r"(canary better|canary worse|no difference detected|not enough labels \(about \d+ more needed\))", ab_line)
    auth_line = next(line for line in lines if line.startswith("✓ auth "))
    masked = re.search(r"customer_profile\.email is protected: an admin reads '([^']+@[^']+)', the viewer reads '\*\*\*'", auth_line)
    assert masked, auth_line
    privacy_line = next(line for line in lines if line.startswith("✓ privacy report "))
    assert "protected fields: customer_profile@1:email; held in 1 online table, 0 training sets" in privacy_line, privacy_line
    erasure_line = next(line for line in lines if line.startswith("✓ erasure "))
    assert re.search(r"dry run for customer_id=\d+: [1-9]\d* offline rows, [1-9]\d* online rows", erasure_line), erasure_line
    assert re.search(r"certificate erasure-certificate\.json \(Ed25519 [0-9a-f]{16}, verifies\): 2 model versions to review, "
                     r"1 backup out of reach", erasure_line), erasure_line  # fmt: skip
    encryption_line = next(line for line in lines if line.startswith("✓ encryption "))
    at_rest = re.search(r"(\d+)/(\d+) files encrypted \(features (\d+)/\3, predictions \d+/\d+, artifacts \d+/\d+, meta\.db 1/1, online\.db 1/1\)",
                        encryption_line)  # fmt: skip
    assert at_rest and at_rest.group(1) == at_rest.group(2), encryption_line
    assert "a batch copied out of the box opens only with the key" in encryption_line
    assert re.search(r"cost vs a plain twin box, same run, medians of 3: ingest \d+\.\d\dx, training set \d+\.\d\dx, .*online lookup \d+\.\d\dx",
                     encryption_line), encryption_line  # fmt: skip
    from mlbox.privacy import certificate

    signed = json.loads((root / "erasure-certificate.json").read_text())
    assert certificate.verify(signed)["totals"]["offline_rows"] > 0 and set(signed["subject"]) == {"customer_id"}
    home = root / "project"
    assert lines[-1].startswith("quickstart passed in ") and f"mlbox --home {home} features list" in lines[-1]

    with Box(load_settings(home, environ={})) as box:
        versions = box.registry.versions("churn")
        assert [(v.version, v.flavor) for v in versions] == [(1, "xgboost"), (2, "sklearn")]
        challenger = versions[1].lineage["spec"]
        assert challenger["preprocess"] is True and challenger["estimator"] == "sklearn.linear_model.LogisticRegression"
        for v in versions:
            assert set(v.artifacts) >= {"model.onnx"} and v.onnx_max_abs_diff is not None
            assert v.onnx_max_abs_diff <= (v.onnx_tolerance or 0)
            assert box.tracking.run(v.run_id or "").status == "finished"
        staging = [v for v in versions if "staging" in v.aliases]
        assert len(staging) == 1 and box.registry.holder("churn", "production") is None
        best = max(versions, key=lambda v: v.metrics["roc_auc"])
        assert staging[0].ref == best.ref and f"{best.ref} is staging" in promote_line
        assert {u.name: u.role for u in box.identity.users()} == {
            OS_USER: "admin", "analyst": "data-scientist", "churn_app": "service",
        }  # fmt: skip
        d = box.deployments.get("churn_api")
        assert (d.primary_model, d.canary_model, d.canary_weight, d.shadow_model) == ("churn:1", "churn:2", 20.0, "churn:2")
        # every answer and every shadow answer of the 200 requests reached the prediction log
        assert box.db.scalar("SELECT sum(rows) FROM prediction_batches WHERE deployment = 'churn_api'") == 800
        assert box.db.scalar("SELECT count(*) FROM monitor_checks WHERE deployment = 'churn_api'") == 2
        assert box.audit.verify().ok
        assert {e.action for e in box.audit.entries(limit=1000)} >= {"models.register", "models.promote", "box.backup"}
    assert (root / "backup" / "meta.db").is_file()

    # the hint on the last line works, and the box answers the CLI
    explore = run_mlbox(["--home", str(home), "--json", "features", "list"], cwd=tmp_path)
    assert explore.returncode == 0, explore.stderr
    models = run_mlbox(["--home", str(home), "--json", "models", "list"], cwd=tmp_path)
    assert models.returncode == 0 and '"aliases": "staging"' in models.stdout
