"""Residency: a box records its country at init; backups, exports, training sets, audit exports and webhooks are
located (declared path prefixes, declared hosts, unknown hosts) and refused outside the residency unless an admin
recorded a transfer basis; every export's audit entry names the region and the basis used."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import PermissionDenied, UsageError
from mlbox.monitor.alerts import alert
from mlbox.monitor.policy import AlertConfig
from mlbox.security.residency import Residency, country_code

from ..conftest import OS_USER


@pytest.fixture
def project(tmp_path: Path, cli) -> Path:  # type: ignore[no-untyped-def]
    home = tmp_path / "proj"
    result = cli("--json", "init", str(home), "--residency", "ae")
    assert result.exit_code == 0, result.exception
    assert json.loads(result.stdout)["residency"] == "AE"
    return home


def entries(home: Path, action: str) -> list[dict[str, Any]]:
    with Box(load_settings(home, environ={})) as box:
        return [e.as_dict() for e in reversed(box.audit.entries(limit=1000)) if e.action == action]  # oldest first


def test_init_records_the_residency_and_refuses_a_bad_code(project: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    shown = cli("--home", str(project), "--json", "privacy", "residency", "show")
    assert json.loads(shown.stdout) == {"residency": "AE"}
    assert entries(project, "privacy.residency")[0]["target"] == "AE"
    bad = cli("init", str(tmp_path / "other"), "--residency", "UAE")
    assert isinstance(bad.exception, UsageError) and not (tmp_path / "other").exists()
    assert country_code("de") == "DE"


def test_a_backup_to_a_bucket_in_another_region_needs_a_transfer_basis(project: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    bucket = tmp_path / "mnt" / "s3-eu"
    bucket.mkdir(parents=True)
    home = ["--home", str(project)]
    # a local folder is in the box's residency: allowed, and the audit entry says so
    assert cli(*home, "backup", str(tmp_path / "local-copy")).exit_code == 0
    local = entries(project, "box.backup")[-1]["details"]
    assert local["region"] == "AE" and local["residency"] == "AE" and local["transfer_basis"] is None

    assert cli(*home, "privacy", "region", "add", str(bucket), "--region", "de").exit_code == 0
    refused = cli(*home, "backup", str(bucket / "copy"))
    assert isinstance(refused.exception, PermissionDenied)
    assert "region DE" in refused.exception.message and "residency AE" in refused.exception.message
    assert not (bucket / "copy").exists()

    added = cli(*home, "--json", "privacy", "transfer", "add", "--to", "DE", "--basis", "adequacy decision",
                "--destination", str(bucket))  # fmt: skip
    basis_id = json.loads(added.stdout)["id"]
    assert cli(*home, "backup", str(bucket / "copy")).exit_code == 0
    assert (bucket / "copy" / "meta.db").is_file()
    used = entries(project, "box.backup")[-1]["details"]
    assert used["region"] == "DE" and used["transfer_basis"] == {"id": basis_id, "basis": "adequacy decision"}
    assert entries(project, "privacy.transfer.add")[-1]["details"]["region"] == "DE"

    # a basis limited to one prefix does not cover another folder in the same region
    elsewhere = tmp_path / "mnt" / "s3-eu-2"
    elsewhere.mkdir()
    assert cli(*home, "privacy", "region", "add", str(elsewhere), "--region", "DE").exit_code == 0
    assert isinstance(cli(*home, "backup", str(elsewhere / "c")).exception, PermissionDenied)

    # revoked: refused again; the list shows it with --all
    assert cli(*home, "privacy", "transfer", "revoke", str(basis_id)).exit_code == 0
    assert isinstance(cli(*home, "backup", str(bucket / "copy2")).exception, PermissionDenied)
    listed = json.loads(cli(*home, "--json", "privacy", "transfer", "list", "--all").stdout)
    assert listed[0]["revoked_at"] is not None and json.loads(cli(*home, "--json", "privacy", "transfer", "list").stdout) == []
    assert entries(project, "privacy.transfer.revoke")[-1]["target"] == f"transfer:{basis_id}"


def test_audit_export_and_models_export_are_checked(project: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    bucket = tmp_path / "eu"
    bucket.mkdir()
    home = ["--home", str(project)]
    cli(*home, "privacy", "region", "add", str(bucket), "--region", "FR")
    refused = cli(*home, "audit", "export", "--out", str(bucket / "evidence.json"))
    assert isinstance(refused.exception, PermissionDenied) and not (bucket / "evidence.json").exists()
    assert cli(*home, "audit", "export", "--out", str(tmp_path / "evidence.json")).exit_code == 0
    assert entries(project, "audit.export")[-1]["details"]["region"] == "AE"
    missing = cli(*home, "models", "export", "nosuch:1", str(bucket / "m.onnx"))
    assert isinstance(missing.exception, PermissionDenied)  # refused before the model is even looked up


def test_an_admin_changes_the_residency_audited(project: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """(Only an admin may: `privacy residency set` needs box.admin, checked for every role by test_matrix_cli.)"""
    assert cli("--home", str(project), "privacy", "residency", "set", "SA").exit_code == 0
    assert entries(project, "privacy.residency")[-1]["details"] == {"before": "AE"}
    assert json.loads(cli("--home", str(project), "--json", "privacy", "residency", "show").stdout) == {"residency": "SA"}


def test_webhooks_are_located_by_host_and_unknown_hosts_are_refused(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Box(load_settings(project, environ={})) as box:
        residency = Residency(box.db, box.audit)
        assert residency.locate_host("hooks.example.com") == "unknown"
        assert residency.locate_host("localhost") == "AE"
        config = AlertConfig(webhook="https://hooks.example.com/mlbox", timeout_s=0.5)
        with caplog.at_level(logging.WARNING, logger="mlbox.monitor"):
            result = alert("drift", "churn", {"reason": "psi 0.4"}, config, gate=residency.webhook_gate())
        assert result is not None and not result.ok and "unknown region" in str(result.error)
        assert "webhook not delivered" in caplog.text
        with pytest.raises(UsageError, match="neither an absolute path"):
            residency.declare(OS_USER, "https://hooks.example.com/x", "DE")
        residency.declare(OS_USER, "Hooks.Example.com", "DE")
        with pytest.raises(PermissionDenied, match="region DE"):
            residency.check_url("https://hooks.example.com/mlbox", "monitoring alert webhook")
        basis = residency.add_transfer(OS_USER, "DE", "standard contractual clauses", "https://hooks.example.com/")
        allowed = residency.check_url("https://hooks.example.com/mlbox", "monitoring alert webhook")
        assert allowed.region == "DE" and allowed.basis == basis
        with pytest.raises(PermissionDenied):
            residency.check_url("https://hooks.example.com.evil.test/x", "monitoring alert webhook")


def test_a_box_without_residency_restricts_nothing(tmp_path: Path) -> None:
    with Box.create(load_settings(tmp_path / "b", environ={}), OS_USER) as box:
        residency = Residency(box.db, box.audit)
        residency.declare(OS_USER, str(tmp_path / "eu"), "DE")
        where = residency.check_path(tmp_path / "eu" / "x", "backup")
        assert where.region == "DE" and where.residency is None and where.basis is None
        assert residency.check_url("https://hooks.example.com/x", "webhook").region == "unknown"


def test_a_symlink_into_a_declared_bucket_is_located_by_its_target(project: Path, tmp_path: Path) -> None:
    bucket = tmp_path / "mnt" / "s3-eu"
    bucket.mkdir(parents=True)
    (tmp_path / "innocent").symlink_to(bucket)
    with Box(load_settings(project, environ={})) as box:
        residency = Residency(box.db, box.audit)
        residency.declare(OS_USER, str(bucket), "DE")
        with pytest.raises(PermissionDenied, match="region DE"):
            residency.check_path(tmp_path / "innocent" / "copy", "backup")
        assert residency.locate_path(tmp_path / "mnt" / "s3-eu-2") == "AE"  # a prefix is a folder, not a string prefix
