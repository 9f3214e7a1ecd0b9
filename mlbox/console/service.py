"""`Console`: every read and change of the TUI's screens, on one open box, as one acting user.

Each method checks the acting user's role against the CLI's permission table (what the equivalent
`mlbox` command needs) before it reads or writes, so the TUI on the box, the management API and
the CLI refuse the same things; a refusal is audited as the CLI audits it. Changes call the CLI
command's own service method with an audit log that adds the operator's reason and `via` (`tui`
on the box, `http` through `mlbox serve`) to the entry the service writes.

It never opens a DuckDB file (Pulse's traffic scans the last minutes of the prediction log's
Parquet files in an in-memory DuckDB) and every list is one bounded page.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox import clock
from mlbox.cli.permissions import COMMANDS, Needs
from mlbox.console.records import PAGE, Me, Page, Pulse, Row, Server, Verified, split_text
from mlbox.console.traffic import Traffic, recent_files, traffic, window_end
from mlbox.store.audit import AuditLog

if TYPE_CHECKING:
    from mlbox.box import Box
    from mlbox.types import Actor

TrafficCache = dict[str, tuple[tuple[object, ...], Traffic]]  # deployment -> (window end and files, its traffic)


class Console:
    """The reads and changes of one acting user on one open box (the caller opens and closes the box)."""

    def __init__(self, box: Box, actor: Actor, via: str = "tui") -> None:
        self.box, self.actor, self.via = box, actor, via

    def me(self) -> Me:
        return Me(self.actor.name, self.actor.role)

    # reads ---------------------------------------------------------------------------------
    def pulse(self, server: Server, cache: TrafficCache | None = None, *, disk: bool = True) -> Pulse:
        """The home screen; `cache` keeps each deployment's traffic until a bucket closes or a log file lands.
        `disk=False` leaves the box's disk use out, for a caller that measures it once the box is closed."""
        from mlbox.monitor.records import Records  # the monitor tables alone: no drift libraries imported

        box = self.box
        self._require("deploy status")
        verdicts = [
            {"deployment": dep, "kind": kind, "verdict": verdict(result)}
            for (dep, kind), result in sorted(Records(box.db).latest().items())
        ]
        deployments = [deployment_row(d.as_dict()) for d in box.deployments.all()]
        home = box.paths.home
        until = window_end(clock.now())
        cache = {} if cache is None else cache
        recent = {}
        for d in deployments:
            files = recent_files(box.db, home, d["name"], until)
            key, cached = (until, *files), cache.get(d["name"])
            if cached is None or cached[0] != key:
                cached = cache[d["name"]] = (key, traffic(files, until))
            recent[d["name"]] = cached[1]
        held = box.jobs.gpu_allocation()
        return Pulse(
            box=home.name, server=server, deployments=deployments, jobs=box.jobs.counts(), gpus=held,
            audit=self._audit_page(6).rows if self.me().may("audit list") else [], verdicts=verdicts,
            disk=disk_use(home) if disk else {}, traffic=recent, devices=gpu_board(held),
        )  # fmt: skip

    def deployments(self) -> list[Row]:
        self._require("deploy status")
        return [deployment_row(d.as_dict()) for d in self.box.deployments.all()]

    def jobs(self, limit: int = PAGE) -> Page:
        self._require("jobs list")
        found = self.box.jobs.list_jobs(None, limit + 1)
        return Page([job_row(j.as_dict()) for j in found[:limit]], len(found) > limit)

    def audit(self, limit: int = PAGE) -> Page:
        self._require("audit list")
        return self._audit_page(limit)

    def _audit_page(self, limit: int) -> Page:
        log = self.box.audit
        head = log.head()
        if head is None:
            return Page([], False)
        last = int(head["seq"])
        first = max(1, last - limit + 1)
        rows = log.rows_between(first, last)  # by seq range: a page costs the same on a log of millions
        out = [
            {"seq": r["seq"], "ts": r["ts"], "actor": r["actor"], "action": r["action"], "target": r["target"],
             "details": details_text(r["details"])}
            for r in reversed(rows)
        ]  # fmt: skip
        return Page(out, first > 1)

    def runs(self, limit: int = PAGE) -> Page:
        self._require("runs list")
        found = self.box.tracking.runs(limit=limit + 1)
        keys = ("id", "experiment", "name", "status", "user", "started_at", "duration_s")
        return Page([{k: r.as_dict().get(k) for k in keys} for r in found[:limit]], len(found) > limit)

    def models(self) -> list[Row]:
        self._require("models list")
        return [v.summary() for v in self.box.registry.versions()]

    def features(self) -> list[Row]:
        """Latest version of every feature view with its batches, rows, classification and PII flag."""
        from mlbox.features.catalog import Catalog  # the catalog alone: no DuckDB, no sweep of the offline store

        self._require("features list")
        catalog, rows = Catalog(self.box.db), []
        for v in catalog.latest_views():
            batches = catalog.batches(v.name, v.version)
            rows.append({
                "view": v.name, "version": v.version, "entity": v.entity.name, "fields": len(v.view.fields),
                "batches": len(batches), "rows": sum(b.row_count for b in batches),
                "classification": v.view.classification or "", "pii": any(v.view.field_pii(f) for f in v.view.fields),
                "owner": v.view.owner or "",
            })  # fmt: skip
        return rows

    def checks(self, limit: int = PAGE) -> Page:
        """The newest monitoring checks (drift, quality, A/B) of every deployment, one row per variant."""
        from mlbox.monitor.records import Records

        self._require("monitor history")
        records, found = Records(self.box.db), []
        for name in records.deployments():
            for kind in ("drift", "quality", "ab"):
                found += [(kind, name, c) for c in records.checks(name, kind, limit + 1)]
        found.sort(key=lambda t: -int(t[2]["id"]))
        rows = []
        for kind, name, c in found[:limit]:
            for variant, v in (c.get("variants") or {"": c}).items():
                drifted = [n for n, f in (v.get("features") or {}).items() if isinstance(f, dict) and f.get("drifted")]
                rows.append({
                    "key": f"{c['id']}/{variant}", "id": c["id"], "deployment": name, "kind": kind,
                    "checked_at": c.get("checked_at", ""), "variant": variant, "model": v.get("model", ""),
                    "rows": v.get("rows"), "verdict": verdict(v), "share": v.get("share"), "features": ", ".join(drifted),
                })  # fmt: skip
        return Page(rows, len(found) > limit)

    def verify_audit(self) -> Verified:
        self._require("audit verify")
        result = self.box.audit.verify()
        return Verified(result.ok, result.checked, result.bad_seq, result.problem)

    def job_log(self, job_id: int, offset: int = -1, limit: int = 65536) -> Row:
        """A byte range of a job's log (`offset=-1`: its last `limit` bytes), for following it (console/logs.py)."""
        from mlbox.console.logs import job_log

        return job_log(self, job_id, offset, limit)

    def run_detail(self, run_id: str) -> Row:
        """One run's params, latest metrics and every metric's history, for comparing runs (console/runs.py)."""
        from mlbox.console.runs import run_detail

        return run_detail(self, run_id)

    def deployment_detail(self, name: str) -> Row:
        """A deployment's shadow-vs-primary disagreement and its A/B verdict (console/deployment.py)."""
        from mlbox.console.deployment import deployment_detail

        return deployment_detail(self, name)

    def predictions(
        self, name: str, limit: int = PAGE, before: str | None = None, variant: str | None = None, errors: bool = False
    ) -> Row:
        """A page of the deployment's prediction log, newest first, protected inputs masked by role
        (`mlbox deploy log`; privacy/predictions.py)."""
        from mlbox.privacy.predictions import prediction_page

        who = self._require("deploy log")
        return prediction_page(self.box, who, name, limit=limit, before=before, variant=variant, errors=errors)

    def check_detail(self, check_id: int) -> Row:
        """One monitoring check in full: each feature's severity and histograms, drift and quality over time
        (console/monitoring.py)."""
        from mlbox.console.monitoring import check_detail

        return check_detail(self, check_id)

    def model_detail(self, ref: str) -> Row:
        """A model version in full: lineage (run, training set, views), its gate, ONNX parity, signature, aliases
        (console/models.py)."""
        from mlbox.console.models import model_detail

        return model_detail(self, ref)

    def view_detail(self, view: str) -> Row:
        """A feature view's fields with their badges, batches, statistics, lineage, and sample values masked by
        role (console/views.py)."""
        from mlbox.console.views import view_detail

        return view_detail(self, view)

    # changes: the CLI command's own service call, with the reason carried into its audit entry -----------------
    def set_canary_weight(self, name: str, weight: float, reason: str) -> Row:
        """`mlbox deploy canary NAME --model <its canary> --weight W`."""
        self._require("deploy canary")
        current = self.box.deployments.get(name)
        if not current.canary_model:
            from mlbox.errors import Conflict

            raise Conflict(f"deployment {name!r} has no canary", hint="`mlbox deploy canary NAME --model M` adds one")
        return self.set_canary(name, current.canary_model, weight, reason)

    def set_canary(self, name: str, model: str, weight: float, reason: str) -> Row:
        """`mlbox deploy canary NAME --model M --weight W`: a canary (a new one, or another model) at `weight` percent."""
        who = self._require("deploy canary")
        return deployment_row(self._deploys(reason).canary(name, model, weight, who.name).as_dict())

    def rollback(self, name: str, reason: str) -> Row:
        """`mlbox deploy rollback NAME`: the canary's traffic to 0, or else the previous primary back."""
        who = self._require("deploy rollback")
        return deployment_row(self._deploys(reason).rollback(name, who.name).as_dict())

    def set_shadow(self, name: str, model: str | None, reason: str) -> Row:
        """`mlbox deploy shadow NAME --model M` (or `--remove` when `model` is None)."""
        who = self._require("deploy shadow")
        return deployment_row(self._deploys(reason).shadow(name, model, who.name).as_dict())

    def promote_model(self, ref: str, alias: str, expected: int | None, reason: str) -> Row:
        """`mlbox models promote REF --to ALIAS --expect N`: compare-and-set against the holder the screen showed."""
        from mlbox.registry.store import Registry

        who = self._require("models promote")
        return Registry(self.box.db, self.box.artifacts, self._audit(reason)).set_alias(ref, alias, who.name, expected).summary()

    def archive_model(self, ref: str, reason: str) -> Row:
        """`mlbox models archive REF`: the version loses its aliases and cannot be promoted again."""
        from mlbox.registry.store import Registry

        who = self._require("models archive")
        return Registry(self.box.db, self.box.artifacts, self._audit(reason)).archive(ref, who.name).summary()

    def cancel_job(self, job_id: int, reason: str) -> Row:
        """`mlbox jobs cancel ID` (your own; an admin, anyone's)."""
        from mlbox.jobs.queue import JobQueue

        who = self._require("jobs cancel")
        return job_row(JobQueue(self.box.db, self._audit(reason)).cancel(job_id, who.name, owner=who).as_dict())

    def retry_job(self, job_id: int, reason: str) -> Row:
        """`mlbox jobs retry ID`: a failed, cancelled or timed-out job queued again (your own; an admin, anyone's)."""
        from mlbox.jobs.queue import JobQueue

        who = self._require("jobs retry")
        return job_row(JobQueue(self.box.db, self._audit(reason)).retry(job_id, who.name, owner=who).as_dict())

    def train_spec(self) -> str:
        """The project's training spec, `train.yaml` in the box's home (what `mlbox train train.yaml` reads)."""
        return str(self.box.paths.home / "train.yaml")

    def submit_train(self, spec: str, reason: str) -> Row:
        """`mlbox jobs submit train SPEC`: the spec checked now, as the CLI does, then queued as a train job."""
        from mlbox.jobs.queue import JobQueue
        from mlbox.train.spec import load_spec

        who = self._require("jobs submit")
        self._require_action("train.run")  # what the CLI checks for a train job, before reading the spec
        path = Path(spec).expanduser().resolve()
        load_spec(path)  # refuse a bad spec now, not in the worker
        payload = {"spec": str(path), "register": False}
        return job_row(JobQueue(self.box.db, self._audit(reason)).submit("train", payload, who.name).as_dict())

    def drift_check(self, name: str) -> Row:
        """`mlbox monitor check NAME`: drift over the last 24 hours, kept in the history (by the acting user)."""
        from mlbox.monitor.window import Window

        who = self._require("monitor check")
        result = self.box.monitor.check(name, Window.parse(), actor=who.name).as_dict()
        return {
            "deployment": name, "drifted": bool(result["drifted"]),
            "variants": {
                v: {"model": r["model"], "rows": r["rows"], "drifted": bool(r["drifted"])}
                for v, r in result["variants"].items()
            },
        }  # fmt: skip

    # checks --------------------------------------------------------------------------------
    def _require(self, command: str) -> Actor:
        """The acting user, refused (PermissionDenied, audited as the CLI does) unless its role may run `command`;
        the screens never offer what the role lacks, so this is the check of last resort."""
        need = COMMANDS[command]
        assert isinstance(need, Needs)
        for action in need.actions:
            self._require_action(action)
        return self.actor

    def _require_action(self, action: str) -> None:
        from mlbox.errors import PermissionDenied
        from mlbox.security.roles import require

        try:
            require(self.actor, action)
        except PermissionDenied:
            details = {"role": self.actor.role, "via": self.via}
            self.box.audit.record_throttled(self.actor.name, "auth.denied", action, details)
            raise

    def _audit(self, reason: str) -> ReasonedAudit:
        return ReasonedAudit(self.box.audit, reason.strip(), self.via)

    def _deploys(self, reason: str) -> Any:
        from mlbox.serve.deployments import Deployments

        return Deployments(self.box.db, self.box.registry, self._audit(reason))


class ReasonedAudit(AuditLog):
    """The box's audit log, adding the operator's `reason` and `via` to every entry the service writes."""

    def __init__(self, log: AuditLog, reason: str, via: str = "tui") -> None:
        super().__init__(log.db, log.key, anchor=log.anchor)
        self.reason, self.via = reason, via

    def record(self, actor: str, action: str, target: str = "", details: dict[str, Any] | None = None) -> int:
        extra = {"via": self.via, **({"reason": self.reason} if self.reason else {})}
        return super().record(actor, action, target, {**(details or {}), **extra})


GPU_PROBE_S = 10.0  # nvidia-smi at most this often, however many screens refresh
_probed: list[Any] = [0.0, None]  # when, the inventory
_probe_lock = threading.Lock()


def gpu_board(held: dict[int, int]) -> list[Row]:
    """Every GPU this machine has (nvidia-smi, probed at most every GPU_PROBE_S), with the running job holding it."""
    from mlbox import hardware

    with _probe_lock:
        if _probed[1] is None or time.monotonic() - _probed[0] > GPU_PROBE_S:
            _probed[:] = [time.monotonic(), hardware.detect(timeout=2.0)]
        inventory = _probed[1]
    return [
        {"index": g.index, "name": g.name, "memory_total_mb": g.memory_total_mb, "memory_used_mb": g.memory_used_mb,
         "utilization_pct": g.utilization_pct, "job": held.get(g.index)}
        for g in inventory.gpus
    ]  # fmt: skip


def disk_use(home: Path) -> dict[str, int]:
    """Bytes under each top-level entry of the box, plus `total`."""
    out: dict[str, int] = {}
    for entry in sorted(home.iterdir()):
        if entry.is_symlink():
            continue
        size = entry.stat().st_size if entry.is_file() else sum(
            p.stat().st_size for p in entry.rglob("*") if p.is_file() and not p.is_symlink()
        )
        key = entry.name.split("-")[0] if entry.is_file() else entry.name  # meta.db-wal counts with meta.db
        out[key] = out.get(key, 0) + size
    out["total"] = sum(out.values())
    return out


def deployment_row(d: Row) -> Row:
    weight = float(d["canary_weight"]) if d.get("canary_model") else 0.0
    return {
        "name": d["name"], "primary": d["primary_model"], "split": split_text(100.0 - weight, weight),
        "primary_weight": round(100.0 - weight, 4),
        "canary": d.get("canary_model") or "", "canary_weight": weight, "shadow": d.get("shadow_model") or "",
        "sticky_key": d.get("sticky_key") or "", "previous": d.get("previous_primary") or "", "revision": d["revision"],
        "updated_at": d["updated_at"], "updated_by": d["updated_by"],
    }  # fmt: skip


def job_row(d: Row) -> Row:
    from datetime import UTC, datetime

    submitted = datetime.fromtimestamp(d["submitted_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    devices = d["devices"]
    return {
        "id": d["id"], "type": d["type"], "status": d["status"], "project": d["project"], "priority": d["priority"],
        "gpus": d["gpus"], "devices": "cpu" if devices == [] else ("" if devices is None else ",".join(map(str, devices))),
        "user": d["submitted_by"], "submitted": submitted, "attempts": d["attempts"], "error": d["error"] or "",
        "stopping": bool(d["cancel_requested"]),
    }  # fmt: skip


def verdict(result: Row) -> str:
    """A stored check's verdict: its own word, else drift's boolean as `drift` or `ok`."""
    if result.get("verdict"):
        return str(result["verdict"])
    return "drift" if result.get("drifted") else "ok"


def details_text(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict):
        return " ".join(f"{k}={json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}" for k, v in value.items())
    return str(value)
