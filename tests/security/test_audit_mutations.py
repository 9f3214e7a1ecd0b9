"""Every mutation is audited: an end-to-end run's actions and actors, two processes on one chain,
the run and job lifecycles, exports, and a classification of every service method that fails
when a new one is added without deciding whether it is audited."""

from __future__ import annotations

import inspect
import json
import os
import signal
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.jobs.placement import GpuState

from ..conftest import MLBOX_SCRIPT, OS_USER, REPO, raw_connect, wait_for

DOCS = REPO / "docs" / "audit.md"
FAST = {"n_estimators": 10, "max_depth": 3, "learning_rate": 0.3}
FEATURES = ["customer_profile:age", "customer_profile:plan", "customer_profile:region",
            "customer_profile:monthly_charges", "usage:*"]  # fmt: skip


def rows(home: Path, sql: str = "SELECT * FROM audit ORDER BY seq") -> list[dict[str, Any]]:
    conn = raw_connect(home / "meta.db")
    try:
        return [dict(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def tamper(home: Path, *statements: str) -> None:
    """Edit meta.db by hand as an attacker with write access would: drop the append-only triggers first."""
    conn = raw_connect(home / "meta.db")
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


# the actions the code writes, and the table in docs/audit.md ------------------------------------
RECORD = re.compile(r"\.record(?:_throttled)?\(\s*[^,()]+(?:\([^()]*\))?[^,()]*,\s*(f?)\"([^\"]+)\"", re.S)


def documented_actions() -> set[str]:
    out = set()
    for line in DOCS.read_text().splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            out |= set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", first))
    return out


def test_every_action_written_in_the_code_is_in_the_docs_table() -> None:
    documented = documented_actions()
    written = {}
    for path in sorted((REPO / "mlbox").rglob("*.py")):
        for m in RECORD.finditer(path.read_text()):
            written[(m.group(1) == "f", m.group(2))] = path.relative_to(REPO)
    assert len(written) > 40  # the pattern still finds the calls
    missing = []
    for (formatted, action), path in written.items():
        if formatted:  # f"deploy.{action}": some documented action has the literal prefix
            prefix = action.split("{", 1)[0]
            if not any(d.startswith(prefix) for d in documented):
                missing.append(f"{action} ({path})")
        elif action not in documented:
            missing.append(f"{action} ({path})")
    assert not missing, f"audited actions missing from docs/audit.md: {missing}"


# service methods: audited, read, or bookkeeping -----------------------------------------------
A, R, B = "audited", "read", "bookkeeping"
SERVICES: dict[str, dict[str, tuple[str, str]]] = {
    "mlbox.tracking.store:TrackingStore": {
        "create_run": (A, "runs.create"),
        "finish": (A, "runs.finish"),
        "log_artifact": (A, "runs.artifact"),
        "mark_killed": (A, "finish"),  # via finish, actor system
        "reap": (A, "mark_killed"),
        "experiment_id": (B, "an experiment is created implicitly by its first run; runs.create names it"),
        "update_json": (B, "params and tags: summarised by name and count in the run's runs.finish"),
        "set_fields": (B, "run lineage fields set while it runs: the run row keeps them"),
        "write_metrics": (B, "metric rows: thousands per run, counted in runs.finish"),
        "artifact_hashes": (R, ""), "experiments": (R, ""), "latest_metrics": (R, ""), "metric_history": (R, ""),
        "run": (R, ""), "run_artifacts": (R, ""), "runs": (R, ""), "stale_runs": (R, ""), "untracked_runs": (R, ""),
    },
    "mlbox.tracking.run:ActiveRun": {
        "end": (A, "store.finish"),
        "log_artifact": (A, "store.log_artifact"),
        "log_param": (B, "update_json"), "log_params": (B, "update_json"), "set_tag": (B, "update_json"),
        "set_tags": (B, "update_json"), "set": (B, "set_fields"), "log_metric": (B, "buffered metrics"),
        "log_metrics": (B, "buffered metrics"), "flush": (B, "write_metrics"),
        "info": (R, ""),
    },
    "mlbox.jobs.queue:JobQueue": {
        "submit": (A, "jobs.submit"), "set_quota": (A, "jobs.quota"), "cancel": (A, "jobs.cancel"),
        "retry": (A, "jobs.retry"), "claim": (A, "jobs.start"), "finish": (A, "jobs.finish"),
        "release": (A, "jobs.release"), "recover": (A, "jobs.recover"),
        "started": (B, "the pid and log path of an attempt jobs.start recorded"),
        "heartbeat": (B, "lease extension every few seconds per running job"),
        "check_owner": (R, ""), "counts": (R, ""), "get": (R, ""), "gpu_allocation": (R, ""), "list_jobs": (R, ""),
    },
    "mlbox.registry.store:Registry": {
        "register": (A, "models.register"), "save_profile": (A, "models.profile"), "set_alias": (A, "models.promote"),
        "archive": (A, "models.archive"), "export": (A, "models.export"),
        "local_files": (B, "materialises a version's files in a scratch folder for loading (not an export)"),
        "artifact_hashes": (R, ""), "artifact_names": (R, ""), "diff": (R, ""), "get": (R, ""), "holder": (R, ""),
        "profile": (R, ""), "versions": (R, ""), "native_files": (R, ""),
    },
    "mlbox.security.residency:Residency": {
        "set_country": (A, "privacy.residency"), "declare": (A, "privacy.region"), "undeclare": (A, "privacy.region.remove"),
        "add_transfer": (A, "privacy.transfer.add"), "revoke_transfer": (A, "privacy.transfer.revoke"),
        "check_path": (R, ""), "check_url": (R, ""), "country": (R, ""), "locate_host": (R, ""), "locate_path": (R, ""),
        "regions": (R, ""), "transfers": (R, ""), "webhook_gate": (R, ""),
    },
    "mlbox.serve.deployments:Deployments": {
        "create": (A, "deploy.create"), "canary": (A, "_write"), "sticky": (A, "_write"), "shadow": (A, "_write"),
        "promote": (A, "_write"), "rollback": (A, "_write"),
        "all": (R, ""), "get": (R, ""), "revisions": (R, ""),
    },
    "mlbox.features.store:FeatureStore": {
        "apply": (A, "features.view.version"), "ingest": (A, "offline.ingest"), "training_set": (A, "features.training_set"),
        "materialize": (A, "materialize("), "push": (A, "push.stage"), "flush": (A, "push.flush"),
        "sweep_online": (B, "drops staging tables a killed writer left (doctor --repair, audited as box.repair)"),
        "close": (B, "closes connections"),
        "get_online_features": (R, ""), "lineage": (R, ""), "list_views": (R, ""), "load": (R, ""),
        "online_leftovers": (R, ""), "pending_pushes": (R, ""), "plan": (R, ""), "show": (R, ""), "snapshot": (R, ""),
        "sql": (R, ""), "view": (R, ""),
    },
    "mlbox.security.identity:Identity": {
        "add_user": (A, "auth.user.add"), "set_role": (A, "auth.user.role"), "disable_user": (A, "auth.user.disable"),
        "create_token": (A, "auth.token.create"), "revoke_token": (A, "auth.token.revoke"),
        "bootstrap_admin": (A, "add_user"),
        "authenticate": (B, "a token's last_used_at; logins are audited by the server (auth.token_login, rate-limited)"),
        "grant": (B, "as authenticate"),
        "actor_for_os_user": (R, ""), "revision": (R, ""), "token": (R, ""), "tokens": (R, ""), "user": (R, ""),
        "users": (R, ""),
    },
    "mlbox.monitor.records:Records": {
        "add_check": (B, "a check's observation, with checked_by; checks change nothing served (docs/audit.md)"),
        "add_action": (B, "written by loop.carry_out in the transaction of its monitor.* entry"),
        "set_policy": (B, "written by loop.store_policies in the transaction of its monitor.policy entry"),
        "remove_policy": (B, "written by loop.remove_policy with its monitor.policy_removed entry"),
        "claim_due": (B, "moves a schedule's next run (compare-and-set between workers)"),
        "actions": (R, ""), "check": (R, ""), "checks": (R, ""), "deployed": (R, ""), "deployments": (R, ""), "latest": (R, ""),
        "policies": (R, ""), "policy": (R, ""),
    },
    "mlbox.jobs.schedules:Schedules": {
        "set": (A, "jobs.schedule"), "remove": (A, "jobs.unschedule"),
        "run_due": (A, "queue.submit"),  # each fired schedule is a submitted job (jobs.submit)
        "all": (R, ""), "get": (R, ""),
    },
}
# An audited method either records its documented action itself, or names the audited delegate it calls
# (`store.finish`, `_write`, `push.stage`…); a read may neither write SQL nor audit.
SQL_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE INTO)\b")
AUDIT_CALL = re.compile(r"audit\.record\(|record_throttled\(")


def service(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(__import__(module, fromlist=[name]), name)  # type: ignore[no-any-return]


def public_methods(cls: type) -> set[str]:
    return {n for n, m in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


@pytest.mark.parametrize("path", sorted(SERVICES))
def test_every_public_service_method_is_classified(path: str) -> None:
    cls, table, documented = service(path), SERVICES[path], documented_actions()
    methods = public_methods(cls)
    new = methods - set(table)
    assert not new, f"{path}: classify {sorted(new)} in SERVICES: audited (with its action), read, or bookkeeping (why)"
    assert not set(table) - methods, f"{path}: gone from the class: {sorted(set(table) - methods)}"
    for name, (kind, why) in table.items():
        source = textwrap.dedent(inspect.getsource(getattr(cls, name)))
        if kind == R:
            assert not SQL_WRITE.search(source), f"{path}.{name} is classified a read but writes SQL"
            assert not AUDIT_CALL.search(source), f"{path}.{name} is classified a read but audits"
        elif kind == A:
            if why in documented:  # it records the action itself
                assert f'"{why}"' in source and AUDIT_CALL.search(source), f"{path}.{name} does not record {why}"
            else:  # it calls the named audited delegate
                assert why in source, f"{path}.{name} is classified audited through {why} but does not call it"
        else:
            assert why, f"{path}.{name}: say why it is not audited"


# the end-to-end run -------------------------------------------------------------------------------
@pytest.fixture
def e2e(tmp_path: Path, cli_run):  # type: ignore[no-untyped-def]
    """features apply → ingest → training-set → train → register → deploy → predict via job → job finish → exports.

    `dana` (data-scientist) acts through a token; the OS user (the admin) deploys, runs the worker and exports the audit.
    """
    from threadpoolctl import threadpool_limits

    home = tmp_path / "proj"
    assert cli_run("init", str(home), "--template", "tabular-classification").exit_code == 0
    with Box(load_settings(home, environ={})) as box:
        box.identity.add_user(OS_USER, "dana", "data-scientist")
        _, token = box.identity.create_token(OS_USER, "dana")
    dana = {"MLBOX_TOKEN": token}

    def mlbox(*args: str, env: dict[str, str] | None = None) -> Any:
        result = cli_run("--home", str(home), *args, env=env)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result

    spec = yaml.safe_load((home / "train.yaml").read_text())
    spec.update(params=FAST, device="cpu", model="churn")
    (home / "fast.yaml").write_text(yaml.safe_dump(spec))
    with threadpool_limits(limits=1):
        mlbox("features", "apply", env=dana)
        mlbox("features", "ingest", "customer_profile", env=dana)
        mlbox("features", "ingest", "usage", env=dana)
        feats = [a for f in FEATURES for a in ("--features", f)]
        labels = str(home / "data" / "labels.csv")
        mlbox("features", "training-set", labels, *feats, "--timestamp", "event_ts", "--out", str(home / "ts.parquet"), env=dana)
        mlbox("train", str(home / "fast.yaml"), "--register", env=dana)
    mlbox("deploy", "create", "churn", "--model", "churn:1")
    mlbox("jobs", "submit", "predict", "churn:1", str(home / "ts.parquet"), str(home / "scored.parquet"), env=dana)
    mlbox("worker", "--once", "--gpus", "none")
    assert len(pd.read_parquet(home / "scored.parquet")) == len(pd.read_parquet(home / "ts.parquet"))
    mlbox("models", "export", "churn:1", str(home / "exported.onnx"), env=dana)
    refused = cli_run("--home", str(home), "audit", "export", "--out", str(home / "no.json"), env=dana)
    assert refused.exit_code != 0 and not (home / "no.json").exists()
    mlbox("audit", "export", "--out", str(home / "evidence.json"))
    return home, token


def test_end_to_end_run_audits_each_mutation_with_its_actor(e2e: tuple[Path, str], cli_run) -> None:  # type: ignore[no-untyped-def]
    home, token = e2e
    entries = rows(home)
    by_action: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_action.setdefault(e["action"], []).append(e)
    expected = {
        "box.init": OS_USER, "auth.user.add": OS_USER, "auth.token.create": OS_USER,
        "features.entity.create": "dana", "features.view.version": "dana", "features.ingest": "dana",
        "features.training_set": "dana", "runs.create": "dana", "runs.artifact": "dana", "runs.finish": "dana",
        "models.register": "dana", "deploy.create": OS_USER, "jobs.submit": "dana", "jobs.start": OS_USER,
        "predict.batch": "dana", "jobs.finish": OS_USER, "models.export": "dana", "auth.denied": "dana",
        "audit.export": OS_USER,
    }  # fmt: skip
    for action, actor in expected.items():
        assert action in by_action, f"{action} was not audited"
        actors = {e["actor"] for e in by_action[action] if action != "auth.user.add" or e["target"] == "dana"}
        assert actors == {actor}, (action, actors)

    assert [e["target"] for e in by_action["features.view.version"]] == ["customer_profile@1", "usage@1"]
    assert len(by_action["features.ingest"]) == 2
    sets = [json.loads(e["details"]) for e in by_action["features.training_set"]]
    assert [s["out"] for s in sets] == [str(home / "ts.parquet"), None]  # the export, then training's in-memory set
    assert all(s["rows"] > 0 and s["views"] == ["customer_profile@1", "usage@1"] for s in sets)
    (run,) = by_action["runs.create"]
    (end,) = by_action["runs.finish"]  # one entry per run, not one per metric
    assert run["target"] == end["target"] == f"run:{json.loads(by_action['models.register'][0]['details'])['run']}"
    end_details = json.loads(end["details"])
    assert end_details["status"] == "finished" and end_details["metric_rows"] >= end_details["metrics"] > 0
    assert end_details["n_params"] == len(end_details["params"]) > 0 and "error" not in end_details
    assert {json.loads(e["details"])["name"] for e in by_action["runs.artifact"]} == {"native/model.ubj"}
    (start,), (finish,) = by_action["jobs.start"], by_action["jobs.finish"]
    assert start["target"] == finish["target"] == by_action["jobs.submit"][0]["target"]
    job_end = json.loads(finish["details"])
    assert job_end["status"] == "succeeded" and job_end["exit_code"] == 0 and job_end["runtime_s"] > 0
    assert start["seq"] < by_action["predict.batch"][0]["seq"] < finish["seq"]  # the job's own process wrote in between
    assert json.loads(by_action["models.export"][0]["details"])["dest"] == str(home / "exported.onnx")
    assert by_action["auth.denied"][0]["target"] == "audit.read"

    # no secrets, no feature values: neither the token nor any customer's email is in the log
    text = "\n".join(f"{e['target']} {e['details']}" for e in entries)
    assert token not in text and token.split(".")[-1] not in text
    emails = pd.read_csv(home / "data" / "customers.csv")["email"].dropna().head(50)
    assert not [m for m in emails if m in text]

    ok = cli_run("--home", str(home), "--json", "audit", "verify")
    assert ok.exit_code == 0 and ok.json()["checked"] == len(entries)  # verify itself writes nothing

    edited, emptied = home.parent / "edited", home.parent / "emptied"
    shutil.copytree(home, edited)
    shutil.copytree(home, emptied)
    tamper(edited, "UPDATE audit SET details = replace(details, 'succeeded', 'failed') WHERE action = 'jobs.finish'")
    bad = cli_run("--home", str(edited), "--json", "audit", "verify")
    assert bad.exit_code != 0 and bad.json()["bad_entry"] == finish["seq"] and "edited" in bad.json()["problem"]
    tamper(emptied, "DELETE FROM audit", "DELETE FROM audit_head")
    gone = cli_run("--home", str(emptied), "--json", "audit", "verify")
    assert gone.exit_code != 0 and "emptied" in gone.json()["problem"]


# two real processes appending to one chain ------------------------------------------------------
WRITER = """
import sys
from pathlib import Path
from mlbox.box import Box
from mlbox.config import load_settings
home, n, stop = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[4])
with Box(load_settings(home, environ={})) as box:
    def one(i):
        with box.start_run("race", f"r{i}") as run:
            run.log_metric("loss", 1.0 / (i + 1))
            run.log_artifact(Path(sys.argv[3]))
    i = 0
    while i < n or not stop.exists():  # until the worker is done: the two really write at the same time
        one(i)
        i += 1
    one(i)  # and once after, so the runs' entries surround the worker's
"""


def test_two_processes_appending_keep_one_valid_chain(box: Box, home: Path) -> None:
    """A real `mlbox worker` (starting and finishing jobs) and a real run-logging process append at once."""
    jobs, runs = 6, 25
    for _ in range(jobs):
        box.jobs.submit("command", {"argv": [sys.executable, "-c", "pass"]}, OS_USER)
    (home / "note.txt").write_text("artifact")
    env = {k: v for k, v in os.environ.items() if k != "MLBOX_TOKEN"} | {"MLBOX_HOME": str(home)}
    stop = home / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(runs), str(home / "note.txt"), str(stop)], env=env)
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: box.audit.entries(action="runs.create", limit=1), 60, "the writer's first run")
        with (home / "worker.log").open("w") as log:
            worker = subprocess.Popen([str(MLBOX_SCRIPT), "worker", "--gpus", "none", "--slots", "3"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        wait_for(lambda: box.jobs.counts().get("succeeded") == jobs, 120, "every job to succeed")
        stop.touch()
        assert writer.wait(120) == 0
    finally:
        writer.kill()
        writer.wait(10)
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)  # the worker stops at SIGTERM; its group holds no job by now
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
    entries = rows(home)
    counts = Counter(e["action"] for e in entries)
    assert counts["jobs.start"] == counts["jobs.finish"] == jobs
    assert counts["runs.create"] == counts["runs.finish"] == counts["runs.artifact"] >= runs
    job_seqs = [e["seq"] for e in entries if e["action"].startswith("jobs.") and e["action"] != "jobs.submit"]
    run_seqs = [e["seq"] for e in entries if e["action"].startswith("runs.")]
    assert min(run_seqs) < min(job_seqs) and max(job_seqs) < max(run_seqs)  # interleaved, not one after the other
    seqs = [e["seq"] for e in rows(home, "SELECT seq FROM audit ORDER BY rowid")]
    assert seqs == list(range(1, len(seqs) + 1))
    result = box.audit.verify()
    assert result.ok and result.checked == len(seqs), result.problem


# the run lifecycle -------------------------------------------------------------------------------
def test_a_run_writes_create_artifact_and_one_end_entry_whatever_it_logs(box: Box, tmp_path: Path) -> None:
    before = box.audit.verify().checked
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError), box.start_run("exp", "boom") as run:
        run.log_params({"lr": 0.1, "data_path": "/secret/customers.csv"})
        for step in range(2000):
            run.log_metric("loss", 1 / (step + 1), step)
        run.log_artifact(tmp_path / "a.txt")
        raise ValueError("row 7 has email bob@example.com")
    entries = box.audit.entries(limit=10)
    assert [e.action for e in reversed(entries)][-3:] == ["runs.create", "runs.artifact", "runs.finish"]
    assert box.audit.verify().checked == before + 3  # 2000 metric rows, 1 params call: no entry of their own
    end = entries[0].details
    assert end["status"] == "failed" and end["error"] == "ValueError" and end["metric_rows"] == 2000
    assert end["params"] == ["data_path", "lr"] and "/secret" not in str(end)
    assert entries[1].details["name"] == "a.txt" and entries[1].details["size"] == 1


def test_runs_of_dead_processes_are_closed_by_the_system_actor(box: Box) -> None:
    from mlbox.tracking.process import ProcessIdentity, current
    from mlbox.tracking.store import TrackingStore

    me = current()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = box.tracking.create_run("exp", "orphan", OS_USER, process=ProcessIdentity(dead.pid, me.started, me.host))
    TrackingStore(box.db, box.artifacts)  # what the next command's open does
    end = box.audit.entries(action="runs.finish", target=f"run:{run_id}")
    assert [(e.actor, e.details["status"]) for e in end] == [("system", "killed")]


def test_a_store_built_without_the_log_still_audits_into_the_box_chain(box: Box) -> None:
    from mlbox.tracking.store import TrackingStore

    bare = TrackingStore(box.db, box.artifacts)  # e.g. doctor, benchmarks
    run_id = bare.create_run("exp", None, "alice")
    bare.finish(run_id, "finished")
    assert [e.action for e in box.audit.entries(target=f"run:{run_id}")] == ["runs.finish", "runs.create"]
    assert box.audit.verify().ok


# jobs seen from the queue ------------------------------------------------------------------------
def test_job_start_finish_and_release_are_audited_once_per_attempt(box: Box) -> None:
    q = box.jobs
    job = q.submit("command", {"argv": ["true"]}, OS_USER, max_attempts=2)
    (claimed, _), = q.claim("w1", [], 1, 30, actor="ops")
    q.release(claimed.id, "its worker stopped", worker="w1", actor="ops")
    q.claim("w2", [GpuState(0, 80000, 80000)], 1, 30, actor="ops")  # a CPU job never takes the GPU
    q.finish(job.id, "timed_out", -9, "ran over", worker="w2", actor="ops")
    q.finish(job.id, "succeeded", 0, worker="w1", actor="ops")  # a worker that lost the job: changes nothing
    entries = list(reversed(box.audit.entries(target=f"job:{job.id}")))
    got = [(e.action, e.actor, e.details.get("status"), e.details.get("attempt")) for e in entries]
    assert got == [
        ("jobs.submit", OS_USER, None, None),
        ("jobs.start", "ops", None, 1),
        ("jobs.release", "ops", "queued", None),
        ("jobs.start", "ops", None, 2),
        ("jobs.finish", "ops", "timed_out", 2),
    ]
    assert entries[3].details["devices"] == [] and entries[3].details["worker"] == "w2"
    assert entries[4].details["exit_code"] == -9 and entries[4].details["runtime_s"] >= 0


# exports outside the e2e run ---------------------------------------------------------------------
def test_monitor_report_file_is_written_whole_and_audited(box: Box, tmp_path: Path) -> None:
    import hashlib

    from mlbox.monitor.report import write_report

    out = tmp_path / "r.html"
    write_report(box.audit, "alice", "churn", out, "<html>é</html>")
    (entry,) = box.audit.entries(action="monitor.report")
    assert out.read_text(encoding="utf-8") == "<html>é</html>" and not list(tmp_path.glob(".*.tmp"))
    assert (entry.actor, entry.target) == ("alice", "churn")
    assert entry.details == {"out": str(out), "bytes": 15, "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
