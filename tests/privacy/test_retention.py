"""Retention: declared per view (metadata, not schema) and for prediction logs and labels; `privacy purge` removes
what is older (dry run first), the online store too; purges are audited and stated by training sets, `features show`
and lineage; the `retention` job runs it from `mlbox worker` on a schedule (`jobs submit retention --every 1d`)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlbox import clock
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import PermissionDenied, UsageError
from mlbox.features.definitions import Entity, FeatureView, Field, parse_view
from mlbox.jobs.schedules import Schedules
from mlbox.loop import schedule_due
from mlbox.privacy.retention import purge
from mlbox.serve.labels import ingest_labels
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.store import purges

from ..conftest import MLBOX_SCRIPT, OS_USER

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CUSTOMER = Entity("customer", {"customer_id": "int64"})
FIELDS = (Field("x", "int64"), Field("email", "string", pii=True))
PROF = FeatureView("prof", "customer", "ts", FIELDS, retention="400d", purpose="churn offers", legal_basis="contract")
KEEP = FeatureView("keep", "customer", "ts", (Field("y", "int64"),))  # no retention: never purged
LOGS = {"MLBOX_PRIVACY_PREDICTION_LOG_RETENTION": "400d", "MLBOX_PRIVACY_LABELS_RETENTION": "400d"}


def days_ago(n: int, now: datetime = NOW) -> pd.Timestamp:
    return pd.Timestamp(now - timedelta(days=n))


def frame(rows: list[tuple[int, int]], now: datetime = NOW) -> pd.DataFrame:
    """(customer_id, age in days) -> feature rows."""
    return pd.DataFrame({
        "customer_id": [c for c, _ in rows], "ts": [days_ago(d, now) for _, d in rows],
        "x": [c * 1000 + d for c, d in rows], "email": [f"c{c}-{d}@example.ae" for c, d in rows],
    })  # fmt: skip


def load_features(box: Box, now: datetime = NOW) -> None:
    """Batch A wholly past 400 days, batch B straddling the cutoff, batch C recent; materialized."""
    fs = box.features
    fs.apply([CUSTOMER, PROF, KEEP], OS_USER)
    fs.ingest("prof", frame([(1, 500), (2, 500)], now), OS_USER)
    fs.ingest("prof", frame([(1, 450), (3, 10)], now), OS_USER)
    fs.ingest("prof", frame([(2, 5), (3, 5)], now), OS_USER)
    fs.ingest("keep", pd.DataFrame({"customer_id": [1], "ts": [days_ago(900, now)], "y": [7]}), OS_USER)
    fs.materialize(actor=OS_USER)


def prof_rows(box: Box) -> list[tuple[int, int]]:
    _, rows = box.features.sql("SELECT customer_id, x FROM prof ORDER BY x", protected="raw")
    return [(int(a), int(b)) for a, b in rows]


@pytest.fixture
def lbox(tmp_path: Path) -> Any:
    b = Box.create(load_settings(tmp_path / "box", environ=LOGS), OS_USER)
    try:
        yield b
    finally:
        b.close()


# definitions ------------------------------------------------------------------------------
def test_retention_purpose_and_legal_basis_are_metadata_not_schema() -> None:
    bare = FeatureView("prof", "customer", "ts", FIELDS)
    assert PROF.schema_hash(CUSTOMER) == bare.schema_hash(CUSTOMER)  # no new version for declaring them
    assert PROF.retention_seconds == 400 * 86400 and bare.retention_seconds is None
    parsed = parse_view({"name": "p", "entity": "customer", "timestamp": "ts", "fields": [{"name": "x", "dtype": "int64"}],
                         "retention": "2w", "purpose": "fraud", "legal_basis": "legal_obligation"}, "f.yaml")  # fmt: skip
    assert (parsed.retention, parsed.purpose, parsed.legal_basis) == ("2w", "fraud", "legal_obligation")
    assert FeatureView.from_dict(parsed.as_dict()) == parsed  # stored in the catalog and read back
    with pytest.raises(UsageError, match="invalid duration"):
        FeatureView("p", "customer", "ts", FIELDS, retention="forever")
    with pytest.raises(UsageError, match="legal_basis 'because' is not one of consent, contract"):
        FeatureView("p", "customer", "ts", FIELDS, legal_basis="because")


def test_declaring_retention_updates_the_current_version_in_place(box: Box) -> None:
    fs = box.features
    fs.apply([CUSTOMER, FeatureView("prof", "customer", "ts", FIELDS)], OS_USER)
    (change,) = [c for c in fs.apply([CUSTOMER, PROF], OS_USER) if c.kind == "view"]
    assert change.action == "update" and "retention" in change.detail and "legal_basis" in change.detail
    assert [v.version for v in fs.catalog.versions("prof")] == [1]
    shown = fs.show("prof")
    assert (shown["retention"], shown["purpose"], shown["legal_basis"]) == ("400d", "churn offers", "contract")


# the purge ---------------------------------------------------------------------------------
def test_dry_run_counts_exactly_what_the_purge_removes_and_changes_nothing(lbox: Box) -> None:
    load_features(lbox)
    files = sorted(p.name for p in (lbox.paths.home / "features").rglob("*.parquet"))
    snapshot, entries = lbox.features.snapshot(), len(lbox.audit.entries(limit=1000))
    dry = purge(lbox, OS_USER, dry_run=True, now=NOW)
    assert dry.dry_run and dry.rows == 3 and dry.files == 2
    (removal,) = dry.removals
    assert (removal.target, removal.rows, removal.files, removal.online_rows) == ("prof@1", 3, 2, 1)
    assert removal.cutoff == clock.iso(NOW - timedelta(days=400)) and removal.retention == "400d"
    assert "features:keep@1" in dry.unlimited
    assert sorted(p.name for p in (lbox.paths.home / "features").rglob("*.parquet")) == files
    assert lbox.features.snapshot() == snapshot and len(lbox.audit.entries(limit=1000)) == entries
    assert purges.of(lbox.db) == [] and len(prof_rows(lbox)) == 6

    done = purge(lbox, OS_USER, now=NOW)
    assert [r.as_dict() for r in done.removals] == [r.as_dict() for r in dry.removals]


def test_purge_removes_feature_rows_past_retention_offline_and_online(lbox: Box) -> None:
    load_features(lbox)
    result = purge(lbox, OS_USER, now=NOW)
    assert result.rows == 3
    assert prof_rows(lbox) == [(2, 2005), (3, 3005), (3, 3010)]  # every row of 450 and 500 days is gone
    assert lbox.features.sql("SELECT count(*) FROM keep", protected="raw")[1] == [(1,)]  # no retention: kept
    got = lbox.features.get_online_features(["prof:x"], [{"customer_id": 1}, {"customer_id": 2}], with_timestamps=True)
    assert got["prof@1:__status"] == ["missing", "ok"]  # customer 1's latest value was 450 days old
    text = "\n".join(p.read_bytes().decode("latin-1") for p in (lbox.paths.home / "features").rglob("*.parquet"))
    assert "c1-450@" not in text and "c1-500@" not in text and "c2-500@" not in text  # the old files are gone
    (entry,) = lbox.audit.entries(action="privacy.purge")
    assert entry.actor == OS_USER and entry.details["rows"] == 3 and entry.details["files"] == 2
    assert entry.details["removed"] == {"features:prof@1": 3} and entry.details["online_rows"] == 1
    (recorded,) = purges.of(lbox.db, "features")
    assert (recorded.target, recorded.rows, recorded.files, recorded.retention) == ("prof@1", 3, 2, "400d")
    assert recorded.commit_seq == lbox.features.snapshot()
    # a second run finds nothing more to remove
    again = purge(lbox, OS_USER, now=NOW)
    assert again.rows == 0 and again.removals == ()


def test_training_sets_show_and_lineage_state_what_was_purged(lbox: Box) -> None:
    load_features(lbox)
    before = lbox.features.snapshot()
    purge(lbox, OS_USER, now=NOW)
    labels = pd.DataFrame({"customer_id": [1, 3], "ts": [days_ago(0), days_ago(0)]})
    for snapshot in (None, before):  # an old snapshot reads the rewritten batches and says so too
        ts = lbox.features.training_set(labels, ["prof:x"], snapshot, timestamp="ts", protected="raw")
        cutoff = clock.iso(NOW - timedelta(days=400))
        assert ts.purged == [f"prof@1: 3 row(s) before {cutoff} purged on {clock.iso()[:10]} by retention 400d"]
        assert ts.frame["x"].tolist()[1] == 3005 and pd.isna(ts.frame["x"].tolist()[0])
    (entry, _) = lbox.audit.entries(action="features.training_set")
    assert entry.details["purged"] == ts.purged  # the set's audit record carries it
    assert lbox.features.show("prof")["purges"] == ts.purged
    (gone,) = lbox.features.lineage("prof")["purges"]
    assert gone["statement"] == ts.purged[0] and gone["rows"] == 3


def write_log(box: Box, deployment: str, ages: list[list[int]]) -> list[str]:
    """One prediction-log file per inner list (records `ages` days old); the request ids."""
    log = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
    ids = []
    for group in ages:
        for age in group:
            rid = f"r{age}"
            ids.append(rid)
            stamp = (NOW - timedelta(days=age)).timestamp()
            log.append(Record(stamp, rid, deployment, "m:1", "primary", False, 1.0, json.dumps([{"customer_id": age}]),
                              "[[1.0]]", "[0.5]", None))  # fmt: skip
        log.flush()
    log.close()
    return ids


def test_purge_removes_prediction_logs_and_labels_past_their_retention(lbox: Box, tmp_path: Path) -> None:
    ids = write_log(lbox, "churn_api", [[500], [450, 3], [2]])
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\n" + "".join(f"{i},1\n" for i in ids))
    ingest_labels(lbox.db, lbox.audit, lbox.paths.predictions, "churn_api", labels, OS_USER)
    dry = purge(lbox, OS_USER, dry_run=True, now=NOW)
    assert {(r.store, r.target, r.rows, r.files) for r in dry.removals} == {
        ("predictions", "churn_api", 2, 2), ("labels", "churn_api", 2, 1)
    }  # fmt: skip
    assert len(lbox.db.query("SELECT * FROM prediction_batches")) == 3
    import pyarrow.parquet as pq

    (schema,) = {pq.read_schema(lbox.paths.home / b["path"]) for b in lbox.db.query("SELECT path FROM prediction_batches")}
    result = purge(lbox, OS_USER, now=NOW)
    assert result.rows == 4
    batches = lbox.db.query("SELECT path, rows, min_ts FROM prediction_batches ORDER BY min_ts")
    assert [b["rows"] for b in batches] == [1, 1] and batches[0]["min_ts"] == clock.iso(NOW - timedelta(days=3))
    on_disk = sorted(str(p.relative_to(lbox.paths.home)) for p in lbox.paths.predictions.rglob("*.parquet") if "labels" not in p.parts)
    assert on_disk == sorted(b["path"] for b in batches)  # the wholly old file is gone, the straddling one replaced
    assert all(pq.read_schema(lbox.paths.home / b["path"]) == schema for b in batches)  # written as the log's writer writes
    _, logged = lbox.features.offline.connect().execute(
        f"SELECT 1, list(request_id ORDER BY request_id) FROM read_parquet({[str(lbox.paths.home / b['path']) for b in batches]})"
    ).fetchone()  # fmt: skip
    assert logged == ["r2", "r3"]
    (label_batch,) = lbox.db.query("SELECT path, rows, matched FROM label_batches")
    assert label_batch["matched"] == 2 and label_batch["rows"] == 2
    kept = lbox.features.offline.connect().execute(
        f"SELECT list(request_id ORDER BY request_id) FROM read_parquet('{lbox.paths.home / label_batch['path']}')"
    ).fetchone()[0]
    assert kept == ["r2", "r3"]
    assert {(p.store, p.rows) for p in purges.of(lbox.db)} == {("predictions", 2), ("labels", 2)}
    (entry,) = lbox.audit.entries(action="privacy.purge")
    assert entry.details["removed"] == {"predictions:churn_api": 2, "labels:churn_api": 2}


def test_without_log_retention_logs_are_kept_and_a_bad_setting_is_refused(tmp_path: Path) -> None:
    with Box.create(load_settings(tmp_path / "a", environ={}), OS_USER) as box:
        write_log(box, "d", [[900]])
        result = purge(box, OS_USER, now=NOW)
        assert result.rows == 0 and "predictions:d" in result.unlimited
        assert len(box.db.query("SELECT * FROM prediction_batches")) == 1
    bad = {"MLBOX_PRIVACY_PREDICTION_LOG_RETENTION": "a while"}
    with Box.create(load_settings(tmp_path / "b", environ=bad), OS_USER) as box:
        with pytest.raises(UsageError, match="privacy.prediction_log_retention: invalid duration"):
            purge(box, OS_USER, now=NOW)


def test_purge_on_an_empty_box_is_a_clear_no_op(box: Box) -> None:
    result = purge(box, OS_USER)
    assert result.rows == 0 and result.removals == () and result.unlimited == ()
    assert box.audit.entries(action="privacy.purge")[0].details["rows"] == 0  # the run itself is still recorded


def test_cli_purge_needs_box_admin_and_reports_json(lbox: Box, cli: Any) -> None:
    load_features(lbox, clock.now())
    env = {"MLBOX_HOME": str(lbox.paths.home)}
    lbox.identity.add_user(OS_USER, "dana", "data-scientist")
    token = lbox.identity.create_token(OS_USER, "dana", never_expires=True)[1]
    refused = cli("privacy", "purge", "--dry-run", env={**env, "MLBOX_TOKEN": token})
    assert isinstance(refused.exception, PermissionDenied) and "box.admin" in str(refused.exception)
    assert len(prof_rows(lbox)) == 6
    r = cli("--json", "privacy", "purge", "--dry-run", env=env)
    assert r.exit_code == 0, r
    assert r.json()["dry_run"] is True and r.json()["rows"] == 3 and len(prof_rows(lbox)) == 6
    r = cli("privacy", "purge", env=env)
    assert r.exit_code == 0 and "removed 3 row(s) in 2 file(s)" in r.stdout and len(prof_rows(lbox)) == 3


# schedules and the worker ----------------------------------------------------------------------
def test_a_due_schedule_fires_once_per_slot_and_never_in_a_burst(box: Box) -> None:
    schedules = Schedules(box.jobs)
    start = 1_000_000.0
    schedules.set("retention", {}, 86400, OS_USER, now=start)
    assert schedules.run_due(start + 10) == []  # not due yet
    late = start + 5 * 86400  # five periods missed (no worker ran)
    (first,) = schedules.run_due(late)
    assert schedules.run_due(late) == []  # a second worker at the same instant wins nothing
    assert schedules.get("retention").next_run == late + 86400
    job = box.jobs.get(first)
    assert (job.type, job.submitted_by, job.payload) == ("retention", OS_USER, {"schedule": "retention"})
    with pytest.raises(UsageError, match="cannot be scheduled"):
        schedules.set("command", {"argv": ["true"]}, 60, OS_USER)
    assert [e.action for e in box.audit.entries(action="jobs.")][-1] == "jobs.schedule"
    schedules.remove("retention", OS_USER)
    assert schedules.all() == [] and box.audit.entries(action="jobs.unschedule")


def test_the_worker_runs_the_retention_job_on_its_schedule(lbox: Box, tmp_path: Path) -> None:
    import subprocess

    load_features(lbox, clock.now())  # a real worker process: data dated against the real clock
    env = {"MLBOX_HOME": str(lbox.paths.home), **LOGS, "PATH": "/nonexistent"}
    run = lambda *a: subprocess.run([str(MLBOX_SCRIPT), *a], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)  # noqa: E731
    r = run("--json", "jobs", "submit", "retention", "--every", "1d")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    r = run("worker", "--once", "--gpus", "none")
    assert r.returncode == 0, r.stderr + r.stdout
    job = lbox.jobs.get(job_id)
    assert job.status == "succeeded", (lbox.paths.home / "logs" / "jobs" / f"{job_id}.log").read_text()
    assert len(prof_rows(lbox)) == 3
    (entry,) = lbox.audit.entries(action="privacy.purge")
    assert entry.details["job"] == job_id and entry.details["rows"] == 3 and entry.actor == OS_USER
    assert [p.job_id for p in purges.of(lbox.db)] == [job_id]
    assert lbox.audit.entries(action="jobs.finish")[0].details["type"] == "retention"
    # a day later the worker's tick queues the next one
    assert schedule_due(lbox, now=time.time() + 10) == []
    (queued,) = schedule_due(lbox, now=time.time() + 86400 + 10)
    assert lbox.jobs.get(queued).type == "retention"
    r = run("--json", "jobs", "schedules")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["every_s"] == 86400


def test_a_view_whose_versions_name_the_timestamp_differently_is_refused_before_any_change(lbox: Box) -> None:
    load_features(lbox)
    renamed = FeatureView("prof", "customer", "at", FIELDS, retention="400d")
    lbox.features.apply([CUSTOMER, renamed], OS_USER)  # a new version: the timestamp column is schema
    write_log(lbox, "d", [[900]])
    with pytest.raises(UsageError, match="names its timestamp differently across versions"):
        purge(lbox, OS_USER, now=NOW)
    assert lbox.features.sql("SELECT count(*) FROM prof_v1", protected="raw")[1] == [(6,)]
    assert len(lbox.db.query("SELECT * FROM prediction_batches")) == 1
    assert purges.of(lbox.db) == [] and lbox.audit.entries(action="privacy.purge") == []


def test_a_deployment_overrides_the_log_retention_and_a_bad_override_is_refused(tmp_path: Path) -> None:
    environ = {"MLBOX_PRIVACY_PREDICTION_LOG_RETENTION": "400d", "MLBOX_PRIVACY_DEPLOYMENT_RETENTION": "fraud=30d, keep=5000d"}
    with Box.create(load_settings(tmp_path / "a", environ=environ), OS_USER) as box:
        for deployment in ("churn", "fraud", "keep"):
            write_log(box, deployment, [[450], [40], [5]])
        result = purge(box, OS_USER, now=NOW)
        assert {(r.target, r.retention, r.rows) for r in result.removals} == {("churn", "400d", 1), ("fraud", "30d", 2)}
        rows = box.db.query("SELECT deployment, count(*) AS n FROM prediction_batches GROUP BY deployment ORDER BY deployment")
        assert [(r["deployment"], r["n"]) for r in rows] == [("churn", 2), ("fraud", 1), ("keep", 3)]
    for bad, message in (("fraud", "is not DEPLOYMENT=DURATION"), ("fraud=soon", "invalid duration"), ("Bad Name=1d", "deployment name")):
        with Box.create(load_settings(tmp_path / f"b{len(bad)}", environ={"MLBOX_PRIVACY_DEPLOYMENT_RETENTION": bad}), OS_USER) as box:
            with pytest.raises(UsageError, match=f"privacy.deployment_retention: .*{message}"):
                purge(box, OS_USER, now=NOW)


def test_a_retention_job_whose_submitter_lost_box_admin_purges_nothing(lbox: Box, tmp_path: Path) -> None:
    import subprocess

    load_features(lbox, clock.now())
    lbox.identity.add_user(OS_USER, "ada", "admin")
    token = lbox.identity.create_token(OS_USER, "ada", never_expires=True)[1]
    env = {"MLBOX_HOME": str(lbox.paths.home), "PATH": "/nonexistent"}
    run = lambda *a, **e: subprocess.run([str(MLBOX_SCRIPT), *a], env={**env, **e}, cwd=tmp_path, capture_output=True, text=True, timeout=120)  # noqa: E731
    r = run("--json", "jobs", "submit", "retention", "--every", "1d", MLBOX_TOKEN=token)
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    lbox.identity.set_role(OS_USER, "ada", "viewer")  # demoted before the worker runs it
    assert run("worker", "--once", "--gpus", "none").returncode == 0
    assert lbox.jobs.get(job_id).status == "failed"
    assert "no longer holds box.admin" in (lbox.paths.home / "logs" / "jobs" / f"{job_id}.log").read_text()
    assert len(prof_rows(lbox)) == 6 and lbox.audit.entries(action="privacy.purge") == []
