"""`mlbox privacy record`: the records of processing from what the box holds — purposes, legal bases and retention per
view, log retention, residency, recipients (deployments serving models trained on the data; audited exports), the last
erasure and purge — as JSON and as a Markdown page for a DPO; `privacy report`'s sections stay as they were."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mlbox.box import Box
from mlbox.privacy.record import NOT_SET, markdown, record, table
from mlbox.privacy.report import SECTIONS
from mlbox.privacy.retention import purge
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

from ..conftest import OS_USER

FAST_XGB = {"n_estimators": 5, "max_depth": 2, "learning_rate": 0.3}


def build(home: Path) -> dict[str, str]:
    """The template (its views declare purpose, legal basis, retention), a model trained on it and deployed,
    a training set exported to a file, the model exported, a purge run; a viewer's token."""
    box, _ = Box.init_project(home, "tabular-classification", OS_USER)
    with box:
        fs = box.features
        fs.apply(fs.load(), OS_USER)
        for view in fs.catalog.latest_views():
            fs.ingest(view.name, actor=OS_USER)
        raw = yaml.safe_load((home / "train.yaml").read_text())
        raw.update(params=FAST_XGB, model="churn", device="cpu")
        raw.pop("gate", None)
        result = train(parse_spec(raw, "train.yaml", home), store=fs, tracking=box.tracking, registry=box.registry,
                       actor=OS_USER, register=True)  # fmt: skip
        model = result.version.ref if result.version else ""
        box.deployments.create("churn_api", model, OS_USER)
        fs.training_set(home / raw["data"]["labels"], ["usage:calls"], out=home.parent / "out" / "set.parquet", actor=OS_USER)
        box.registry.export(model, "onnx", home.parent / "exported", actor=OS_USER)
        purge(box, OS_USER)
        box.identity.add_user(OS_USER, "vera", "viewer")
        token = box.identity.create_token(OS_USER, "vera", never_expires=True)[1]
    return {"model": model, "token": token}


def test_the_record_states_purposes_bases_retention_recipients_exports_and_purges(tmp_path: Path, cli: Any) -> None:
    home = tmp_path / "proj"
    made = build(home)
    env = {"MLBOX_HOME": str(home), "MLBOX_TOKEN": made["token"]}  # a viewer: the record needs only `read`
    r = cli("--json", "privacy", "record", env=env)
    assert r.exit_code == 0, r
    data = r.json()
    views = {v["view"]: v for v in data["views"]}
    assert views["customer_profile"]["purpose"] == "Predict churn to make retention offers to subscribers."
    assert views["customer_profile"]["legal_basis"] == "legitimate_interests" and views["customer_profile"]["retention"] == "730d"
    assert views["customer_profile"]["protected_fields"] == ["email"]
    assert views["usage"]["retention"] == "400d" and views["usage"]["rows"] > 0
    logs = {entry["store"]: entry for entry in data["logs"]}
    assert logs["predictions"]["retention"] == NOT_SET and logs["labels"]["setting"] == "privacy.labels_retention"
    assert data["box"]["residency"] == NOT_SET and data["transfers"] == []  # the template box records none
    (recipient,) = data["recipients"]
    assert recipient["deployment"] == "churn_api" and recipient["model"] == made["model"] and recipient["role"] == "primary"
    assert set(recipient["views"]) == {"customer_profile@1", "usage@1"}
    actions = {e["action"]: e for e in data["exports"]}
    assert actions["features.training_set"]["destination"].endswith("out/set.parquet")
    assert actions["models.export"]["target"] == made["model"]
    assert data["last_erasure"] is None  # none made yet
    assert data["last_purge"]["action"] == "privacy.purge" and data["last_purge"]["details"]["rows"] == 0
    assert data["purges"] == []  # nothing in the template data is past its retention

    out = tmp_path / "dpo" / "record.md"
    r = cli("privacy", "record", "--markdown", "--out", str(out), env=env)
    assert r.exit_code == 0, r
    page = out.read_text()
    assert page.startswith(f"# Record of processing activities: {data['box']['project']}\n")
    assert "| customer_profile | 1 | customer | Predict churn to make retention offers to subscribers. | legitimate_interests | 730d |" in page
    assert "| churn_api | primary |" in page and "models.export" in page
    assert "- Last erasure: none recorded" in page and "- Last purge: " in page and "0 rows" in page
    assert "@example.ae" not in page  # purposes and locations, never values
    (written,) = [e for e in _audit(home) if e["action"] == "privacy.record"]
    assert written["target"] == str(out) and json.loads(written["details"])["format"] == "markdown"
    r = cli("privacy", "record", "--out", str(tmp_path / "dpo" / "record.json"), env=env)
    assert r.exit_code == 0 and json.loads((tmp_path / "dpo" / "record.json").read_text())["views"] == data["views"]
    text = cli("privacy", "record", env=env)
    assert text.exit_code == 0 and "churn_api" in text.stdout and "legitimate_interests" in text.stdout


def _audit(home: Path) -> list[dict[str, Any]]:
    from ..conftest import raw_connect

    conn = raw_connect(home / "meta.db")
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]
    finally:
        conn.close()


def test_a_fresh_box_has_a_record_with_nothing_declared(box: Box) -> None:
    data = record(box)
    assert data["views"] == [] and data["recipients"] == [] and data["exports"] == []
    assert data["last_erasure"] is None and data["last_purge"] is None
    page = markdown(data)
    assert "_None._" in page and "- Last purge: none recorded" in page


def test_markdown_cells_are_escaped() -> None:
    rendered = table([{"a": "x | y", "b": ["p", "q"], "c": None}], ["a", "b", "c"])
    assert rendered.splitlines()[2] == "| x \\| y | p, q | — |"


def test_privacy_report_keeps_its_sections() -> None:
    assert SECTIONS == ("fields", "online_tables", "training_sets", "models", "profiles", "deployments")


def test_the_record_states_the_residency_and_transfer_bases(box: Box) -> None:
    from mlbox.security.residency import Residency

    where = Residency(box.db, box.audit)
    where.set_country(OS_USER, "AE")
    where.add_transfer(OS_USER, "DE", "adequacy decision", "/mnt/s3-eu")
    data = record(box)
    assert data["box"]["residency"] == "AE"
    (basis,) = data["transfers"]
    assert (basis["region"], basis["basis"], basis["destination"]) == ("DE", "adequacy decision", "/mnt/s3-eu")
    page = markdown(data)
    assert "Residency: **AE**." in page and "| adequacy decision | /mnt/s3-eu |" in page
