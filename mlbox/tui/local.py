"""`LocalClient`: the `BoxClient` that reads and changes the box on this machine, as the OS user (or a token's user).

It opens the box afresh for each call, in the calling worker thread, and closes it before
returning: it never keeps a database open between refreshes, so it never holds a lock `mlbox serve`
or the worker waits on. It never opens a DuckDB file (Pulse's traffic scans the last minutes of the
prediction log's Parquet files in an in-memory DuckDB) and every list is one bounded page.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox import clock
from mlbox.cli.permissions import COMMANDS, Needs
from mlbox.store.audit import AuditLog
from mlbox.tui.client import PAGE, Me, Page, Pulse, Row, Server, Verified, split_text
from mlbox.tui.traffic import Traffic, recent_files, traffic, window_end
from mlbox.types import Actor

if TYPE_CHECKING:
    from datetime import datetime

    from mlbox.box import Box
    from mlbox.config import Settings


class LocalClient:
    """A `BoxClient` reading and changing the box on this machine, as the effective OS user."""

    def __init__(self, settings: Settings, *, token: str | None = None, os_user: str | None = None) -> None:
        """Act as `token`'s user when given (as `mlbox --token-file`/MLBOX_TOKEN do), else as the OS user
        (`os_user`, default the effective one from the kernel)."""
        self.settings = settings
        self._token = token
        self._os_user = os_user
        # deployment -> (the window's end and files, its traffic): recomputed only when a bucket closes or a file lands
        self._traffic: dict[str, tuple[tuple[object, ...], Traffic]] = {}

    @contextmanager
    def _box(self) -> Iterator[Box]:
        from mlbox.box import Box

        box = Box(self.settings)
        try:
            yield box
        finally:
            box.close()

    def _actor(self, box: Box) -> Actor:
        if self._token:
            grant = box.identity.grant(self._token, touch=False)  # a refresh every few seconds is not a login
            if grant.scopes is not None:
                from mlbox.errors import PermissionDenied

                raise PermissionDenied(
                    f"{grant.actor.name}'s token is scoped; the TUI reads the whole box", hint="use an unscoped token"
                )
            return grant.actor
        return box.identity.actor_for_os_user(self._os_user or _os_user())

    def _who(self, box: Box) -> Me:
        actor = self._actor(box)
        return Me(actor.name, actor.role)

    def me(self) -> Me:
        with self._box() as box:
            return self._who(box)

    # reads ---------------------------------------------------------------------------------
    def pulse(self) -> Pulse:
        from mlbox.monitor.records import Records  # the monitor tables alone: no drift libraries imported

        with self._box() as box:
            actor = self._require(box, "deploy status")
            who = Me(actor.name, actor.role)
            verdicts = [
                {"deployment": dep, "kind": kind, "verdict": _verdict(result)}
                for (dep, kind), result in sorted(Records(box.db).latest().items())
            ]
            deployments = [_deployment(d.as_dict()) for d in box.deployments.all()]
            jobs, gpus = box.jobs.counts(), box.jobs.gpu_allocation()
            audit = self._audit_page(box, 6).rows if who.may("audit list") else []
            home = box.paths.home
            until = window_end(clock.now())
            files = {d["name"]: recent_files(box.db, home, d["name"], until) for d in deployments}
        return Pulse(
            box=home.name, server=probe(self.settings), deployments=deployments, jobs=jobs, gpus=gpus, audit=audit,
            verdicts=verdicts,
            disk=disk_use(home),  # measured once closed: our own connection's WAL file is not the box's size
            traffic={name: self._recent_traffic(name, until, found) for name, found in files.items()},
        )  # fmt: skip

    def _recent_traffic(self, name: str, until: datetime, files: list[Path]) -> Traffic:
        key = (until, *files)
        cached = self._traffic.get(name)
        if cached is None or cached[0] != key:
            cached = self._traffic[name] = (key, traffic(files, until))
        return cached[1]

    def deployments(self) -> list[Row]:
        with self._box() as box:
            self._require(box, "deploy status")
            return [_deployment(d.as_dict()) for d in box.deployments.all()]

    def jobs(self, limit: int = PAGE) -> Page:
        with self._box() as box:
            self._require(box, "jobs list")
            found = box.jobs.list_jobs(None, limit + 1)
            return Page([_job(j.as_dict()) for j in found[:limit]], len(found) > limit)

    def audit(self, limit: int = PAGE) -> Page:
        with self._box() as box:
            self._require(box, "audit list")
            return self._audit_page(box, limit)

    @staticmethod
    def _audit_page(box: Box, limit: int) -> Page:
        head = box.audit.head()
        if head is None:
            return Page([], False)
        last = int(head["seq"])
        first = max(1, last - limit + 1)
        rows = box.audit.rows_between(first, last)  # by seq range: a page costs the same on a log of millions
        out = [
            {"seq": r["seq"], "ts": r["ts"], "actor": r["actor"], "action": r["action"], "target": r["target"],
             "details": _details(r["details"])}
            for r in reversed(rows)
        ]  # fmt: skip
        return Page(out, first > 1)

    def runs(self, limit: int = PAGE) -> Page:
        with self._box() as box:
            self._require(box, "runs list")
            found = box.tracking.runs(limit=limit + 1)
            rows = []
            for run in found[:limit]:
                d = run.as_dict()
                rows.append({k: d.get(k) for k in ("id", "experiment", "name", "status", "user", "started_at", "duration_s")})
            return Page(rows, len(found) > limit)

    def models(self) -> list[Row]:
        with self._box() as box:
            self._require(box, "models list")
            return [v.summary() for v in box.registry.versions()]

    def features(self) -> list[Row]:
        """Latest version of every feature view with its batches, rows, classification and PII flag."""
        from mlbox.features.catalog import Catalog  # the catalog alone: no DuckDB, no sweep of the offline store

        with self._box() as box:
            self._require(box, "features list")
            catalog, rows = Catalog(box.db), []
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

        with self._box() as box:
            self._require(box, "monitor history")
            records, found = Records(box.db), []
            for name in records.deployments():
                for kind in ("drift", "quality", "ab"):
                    found += [(kind, name, c) for c in records.checks(name, kind, limit + 1)]
            found.sort(key=lambda t: -int(t[2]["id"]))
            rows = []
            for kind, name, c in found[:limit]:
                variants = c.get("variants") or {"": c}
                for variant, v in variants.items():
                    drifted = [n for n, f in (v.get("features") or {}).items() if isinstance(f, dict) and f.get("drifted")]
                    rows.append({
                        "key": f"{c['id']}/{variant}", "id": c["id"], "deployment": name, "kind": kind,
                        "checked_at": c.get("checked_at", ""), "variant": variant, "model": v.get("model", ""),
                        "rows": v.get("rows"), "verdict": _verdict(v), "share": v.get("share"),
                        "features": ", ".join(drifted),
                    })  # fmt: skip
            return Page(rows, len(found) > limit)

    def verify_audit(self) -> Verified:
        with self._box() as box:
            self._require(box, "audit verify")
            result = box.audit.verify()
            return Verified(result.ok, result.checked, result.bad_seq, result.problem)

    # changes: the CLI command's own service call, with the reason carried into its audit entry
    def set_canary_weight(self, name: str, weight: float, reason: str) -> Row:
        from mlbox.serve.deployments import Deployments

        with self._box() as box:
            who = self._require(box, "deploy canary")
            current = box.deployments.get(name)
            if not current.canary_model:
                from mlbox.errors import Conflict

                raise Conflict(f"deployment {name!r} has no canary", hint="`mlbox deploy canary NAME --model M` adds one")
            service = Deployments(box.db, box.registry, reasoned(box, reason))
            return _deployment(service.canary(name, current.canary_model, weight, who.name).as_dict())

    def rollback(self, name: str, reason: str) -> Row:
        """`mlbox deploy rollback NAME`: the canary's traffic to 0, or else the previous primary back."""
        with self._box() as box:
            who = self._require(box, "deploy rollback")
            return _deployment(self._deployments(box, reason).rollback(name, who.name).as_dict())

    def set_shadow(self, name: str, model: str | None, reason: str) -> Row:
        """`mlbox deploy shadow NAME --model M` (or `--remove` when `model` is None)."""
        with self._box() as box:
            who = self._require(box, "deploy shadow")
            return _deployment(self._deployments(box, reason).shadow(name, model, who.name).as_dict())

    def promote_model(self, ref: str, alias: str, expected: int | None, reason: str) -> Row:
        """`mlbox models promote REF --to ALIAS --expect N`: compare-and-set against the holder the screen showed."""
        from mlbox.registry.store import Registry

        with self._box() as box:
            who = self._require(box, "models promote")
            registry = Registry(box.db, box.artifacts, reasoned(box, reason))
            return registry.set_alias(ref, alias, who.name, expected).summary()

    def archive_model(self, ref: str, reason: str) -> Row:
        """`mlbox models archive REF`: the version loses its aliases and cannot be promoted again."""
        from mlbox.registry.store import Registry

        with self._box() as box:
            who = self._require(box, "models archive")
            return Registry(box.db, box.artifacts, reasoned(box, reason)).archive(ref, who.name).summary()

    @staticmethod
    def _deployments(box: Box, reason: str) -> Any:
        from mlbox.serve.deployments import Deployments

        return Deployments(box.db, box.registry, reasoned(box, reason))

    def cancel_job(self, job_id: int, reason: str) -> Row:
        from mlbox.jobs.queue import JobQueue

        with self._box() as box:
            who = self._require(box, "jobs cancel")
            job = JobQueue(box.db, reasoned(box, reason)).cancel(job_id, who.name, owner=who)
            return _job(job.as_dict())

    def retry_job(self, job_id: int, reason: str) -> Row:
        """`mlbox jobs retry ID`: a failed, cancelled or timed-out job queued again (your own; an admin, anyone's)."""
        from mlbox.jobs.queue import JobQueue

        with self._box() as box:
            who = self._require(box, "jobs retry")
            return _job(JobQueue(box.db, reasoned(box, reason)).retry(job_id, who.name, owner=who).as_dict())

    def train_spec(self) -> str:
        """The project's training spec, `train.yaml` in the box's home (what `mlbox train train.yaml` reads)."""
        return str(self.settings.home / "train.yaml")

    def submit_train(self, spec: str, reason: str) -> Row:
        """`mlbox jobs submit train SPEC`: the spec checked now, as the CLI does, then queued as a train job."""
        from mlbox.jobs.queue import JobQueue
        from mlbox.train.spec import load_spec

        with self._box() as box:
            who = self._require(box, "jobs submit")
            self._require_action(box, who, "train.run")  # what the CLI checks for a train job, before reading the spec
            path = Path(spec).expanduser().resolve()
            load_spec(path)  # refuse a bad spec now, not in the worker
            payload = {"spec": str(path), "register": False}
            return _job(JobQueue(box.db, reasoned(box, reason)).submit("train", payload, who.name).as_dict())

    def drift_check(self, name: str) -> Row:
        """`mlbox monitor check NAME`: drift over the last 24 hours, kept in the history (by the acting user)."""
        from mlbox.monitor.window import Window

        with self._box() as box:
            who = self._require(box, "monitor check")
            result = box.monitor.check(name, Window.parse(), actor=who.name).as_dict()
        variants = result["variants"]
        return {
            "deployment": name, "drifted": bool(result["drifted"]),
            "variants": {
                v: {"model": r["model"], "rows": r["rows"], "drifted": bool(r["drifted"])} for v, r in variants.items()
            },
        }  # fmt: skip

    def _require(self, box: Box, command: str) -> Actor:
        """The acting user, refused (PermissionDenied, audited as the CLI does) unless its role may run `command`;
        the screens never offer what the role lacks, so this is the check of last resort."""
        actor = self._actor(box)
        need = COMMANDS[command]
        assert isinstance(need, Needs)
        for action in need.actions:
            self._require_action(box, actor, action)
        return actor

    @staticmethod
    def _require_action(box: Box, actor: Actor, action: str) -> None:
        from mlbox.errors import PermissionDenied
        from mlbox.security.roles import require

        try:
            require(actor, action)
        except PermissionDenied:
            box.audit.record_throttled(actor.name, "auth.denied", action, {"role": actor.role, "via": "tui"})
            raise


class ReasonedAudit(AuditLog):
    """The box's audit log, adding the operator's `reason` and `via: tui` to every entry the service writes."""

    def __init__(self, log: AuditLog, reason: str) -> None:
        super().__init__(log.db, log.key, anchor=log.anchor)
        self.reason = reason

    def record(self, actor: str, action: str, target: str = "", details: dict[str, Any] | None = None) -> int:
        extra = {"via": "tui", **({"reason": self.reason} if self.reason else {})}
        return super().record(actor, action, target, {**(details or {}), **extra})


def reasoned(box: Box, reason: str) -> ReasonedAudit:
    return ReasonedAudit(box.audit, reason.strip())


def _os_user() -> str:
    from mlbox.security import osuser

    return osuser.effective_os_user()


def probe(settings: Settings, timeout: float = 0.5) -> Server:
    """GET /readyz on the box's serve address: `up` when it answers 200, else `down` with why."""
    host, port = str(settings["serve.host"]), int(settings["serve.port"])
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # a wildcard bind answers on loopback
    tls = bool(settings["serve.ssl_certfile"])
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    # readiness only: no token or data is sent, so an unverified TLS handshake leaks nothing
    context = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout, context=context) as r:  # noqa: S310 (http(s) only)
            return Server("up" if r.status == 200 else "down", url, f"readyz {r.status}")
    except OSError as exc:
        return Server("down", url, type(getattr(exc, "reason", exc)).__name__)


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


def _deployment(d: Row) -> Row:
    weight = float(d["canary_weight"]) if d.get("canary_model") else 0.0
    return {
        "name": d["name"], "primary": d["primary_model"], "split": split_text(100.0 - weight, weight),
        "primary_weight": round(100.0 - weight, 4),
        "canary": d.get("canary_model") or "", "canary_weight": weight, "shadow": d.get("shadow_model") or "",
        "sticky_key": d.get("sticky_key") or "", "previous": d.get("previous_primary") or "", "revision": d["revision"],
        "updated_at": d["updated_at"],
        "updated_by": d["updated_by"],
    }  # fmt: skip


def _job(d: Row) -> Row:
    from datetime import UTC, datetime

    submitted = datetime.fromtimestamp(d["submitted_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    devices = d["devices"]
    return {
        "id": d["id"], "type": d["type"], "status": d["status"], "project": d["project"], "priority": d["priority"],
        "gpus": d["gpus"], "devices": "cpu" if devices == [] else ("" if devices is None else ",".join(map(str, devices))),
        "user": d["submitted_by"], "submitted": submitted, "attempts": d["attempts"], "error": d["error"] or "",
        "stopping": bool(d["cancel_requested"]),
    }  # fmt: skip


def _verdict(result: Row) -> str:
    """A stored check's verdict: its own word, else drift's boolean as `drift` or `ok`."""
    if result.get("verdict"):
        return str(result["verdict"])
    return "drift" if result.get("drifted") else "ok"


def _details(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict):
        return " ".join(f"{k}={json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}" for k, v in value.items())
    return str(value)
