"""Experiment tracking over meta.db: experiments, runs, params, tags, metrics, run artifacts.

All tracking SQL lives here. Metrics arrive in batches (`ActiveRun` buffers them) and are
written with one `executemany` per flush, so logging never dominates a training loop.

A run records the process running it (pid, start time, host) and a heartbeat at every
metric flush. A `running` run whose process is gone was killed (kill -9, OOM, power): opening
the store marks such runs `killed`; a live process's run is never touched.

Audited (see docs/audit.md): a run's creation (`runs.create`), its end (`runs.finish`, once per
run, summarising its params, tags and metrics by name and count: a training loop logs thousands
of metric rows and must not write an audit entry each) and each logged artifact (`runs.artifact`,
with its sha256). Param values, tag values, metric values and error messages stay out of the
audit: they may hold data; the run row keeps them.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbox import clock
from mlbox.errors import NotFound, UsageError
from mlbox.store.artifacts import ArtifactStore
from mlbox.store.audit import AuditLog
from mlbox.store.sqlite import Database
from mlbox.tracking import process
from mlbox.types import check_name

RUN_STATUSES = ("running", "finished", "failed", "interrupted", "killed")
REAPER = "system"  # the actor that marks runs of dead processes killed (no user asked for it)
MAX_NAMES = 50  # param and tag names listed in a run's end entry; the count is always exact
MetricRow = tuple[str, str, int, float | None, float]  # run_id, key, step, value, ts


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """One run as recorded: identity, status, timing, params, tags, environment, lineage."""

    id: str
    experiment: str
    name: str
    status: str
    user: str
    started_at: str
    ended_at: str | None
    duration_s: float | None
    device: str | None
    params: dict[str, Any]
    tags: dict[str, Any]
    environment: dict[str, Any]
    env_hash: str | None
    code_rev: str | None
    code_dirty: bool | None
    dataset_fingerprint: str | None
    feature_views: list[str]
    error: str | None
    pid: int | None = None
    host: str | None = None
    heartbeat_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TrackingStore:
    """Experiments, runs, metrics and run artifacts in meta.db; marks runs of dead processes killed on open."""

    def __init__(self, db: Database, artifacts: ArtifactStore, audit: AuditLog | None = None, *, reap: bool = True) -> None:
        self.db = db
        self.artifacts = artifacts
        # never unaudited: a store built without the box's log opens it from the key beside meta.db
        self.audit = audit if audit is not None else AuditLog.beside(db)
        if reap:
            self.reap()

    # experiments ----------------------------------------------------------
    def experiment_id(self, name: str, actor: str) -> int:
        check_name(name.replace("-", "_"), "experiment name")
        with self.db.atomic():
            row = self.db.one("SELECT id FROM experiments WHERE name = ?", (name,))
            if row:
                return int(row["id"])
            return int(
                self.db.execute(
                    "INSERT INTO experiments (name, created_at, created_by) VALUES (?, ?, ?)", (name, clock.iso(), actor)
                ).lastrowid
                or 0
            )

    def experiments(self) -> list[dict[str, Any]]:
        return self.db.query(
            "SELECT e.name, e.created_at, e.created_by, count(r.id) AS runs, max(r.started_at) AS last_run "
            "FROM experiments e LEFT JOIN runs r ON r.experiment_id = e.id GROUP BY e.id ORDER BY e.name"
        )

    # runs -----------------------------------------------------------------
    def create_run(self, experiment: str, name: str | None, actor: str, **fields: Any) -> str:
        """A new `running` run of this process (or of `fields["process"]`, a ProcessIdentity)."""
        exp = self.experiment_id(experiment, actor)
        run_id = uuid.uuid4().hex[:16]
        owner: process.ProcessIdentity = fields.get("process") or process.current()
        now = clock.iso()
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO runs (id, experiment_id, name, status, user, started_at, params, tags, environment, env_hash, "
                "code_rev, code_dirty, dataset_fingerprint, feature_views, device, pid, pid_started, host, heartbeat_at) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    exp,
                    name or run_id[:8],
                    actor,
                    now,
                    _json(fields.get("params", {})),
                    _json(fields.get("tags", {})),
                    _json(fields.get("environment", {})),
                    fields.get("env_hash"),
                    fields.get("code_rev"),
                    fields.get("code_dirty"),
                    fields.get("dataset_fingerprint"),
                    _json(fields.get("feature_views", [])),
                    fields.get("device"),
                    owner.pid,
                    owner.started,
                    owner.host,
                    now,
                ),
            )
            self.audit.record(
                actor,
                "runs.create",
                f"run:{run_id}",
                {
                    "experiment": experiment,
                    "name": name or run_id[:8],
                    "dataset": fields.get("dataset_fingerprint"),
                    "code_rev": fields.get("code_rev"),
                    "env_hash": fields.get("env_hash"),
                },
            )
        return run_id

    def update_json(self, run_id: str, column: str, values: Mapping[str, Any]) -> None:
        """Merge `values` into the run's params or tags."""
        if column not in ("params", "tags"):
            raise ValueError(column)
        with self.db.atomic():
            row = self.db.one(f"SELECT {column} FROM runs WHERE id = ?", (run_id,))
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            merged = {**json.loads(row[column]), **{str(k): v for k, v in values.items()}}
            self.db.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (_json(merged), run_id))

    def set_fields(self, run_id: str, **fields: Any) -> None:
        allowed = {"device", "dataset_fingerprint", "feature_views", "code_rev", "code_dirty"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(bad)
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = [_json(v) if k == "feature_views" else v for k, v in fields.items()]
        with self.db.atomic():
            self.db.execute(f"UPDATE runs SET {sets} WHERE id = ?", [*values, run_id])

    def finish(self, run_id: str, status: str, error: str | None = None, *, actor: str | None = None) -> None:
        """End the run and audit it once (`runs.finish`), by `actor` (default: the run's own user)."""
        if status not in RUN_STATUSES:
            raise ValueError(status)
        with self.db.atomic():
            row = self.db.one("SELECT started_at, user, params, tags FROM runs WHERE id = ?", (run_id,))
            if row is None:
                raise NotFound(f"no run {run_id!r}")
            ended = clock.now()
            duration = (ended - clock.parse_iso(row["started_at"])).total_seconds()
            self.db.execute(
                "UPDATE runs SET status = ?, ended_at = ?, duration_s = ?, error = ? WHERE id = ?",
                (status, clock.iso(ended), duration, error, run_id),
            )
            self.audit.record(actor or row["user"], "runs.finish", f"run:{run_id}", self._summary(run_id, row, status, duration, error))

    def _summary(self, run_id: str, row: dict[str, Any], status: str, duration: float, error: str | None) -> dict[str, Any]:
        """What a run's end entry says: names and counts, never values (params may name data, metrics are many)."""
        params, tags = sorted(json.loads(row["params"])), sorted(json.loads(row["tags"]))
        metrics = self.db.one("SELECT count(DISTINCT key) AS keys, count(*) AS n FROM metrics WHERE run_id = ?", (run_id,))
        artifacts = self.db.scalar("SELECT count(*) FROM run_artifacts WHERE run_id = ?", (run_id,))
        out: dict[str, Any] = {
            "status": status,
            "duration_s": round(duration, 3),
            "params": params[:MAX_NAMES],
            "n_params": len(params),
            "tags": tags[:MAX_NAMES],
            "n_tags": len(tags),
            "metrics": int(metrics["keys"]) if metrics else 0,
            "metric_rows": int(metrics["n"]) if metrics else 0,
            "artifacts": int(artifacts or 0),
        }
        if error:  # the exception's class only: its message may quote a data value
            out["error"] = error.split(":", 1)[0][:80]
        return out

    def write_metrics(self, rows: Sequence[MetricRow]) -> None:
        """Insert metric rows; the same transaction moves each run's heartbeat to now."""
        if rows:
            now = clock.iso()
            with self.db.atomic():
                self.db.executemany("INSERT INTO metrics (run_id, key, step, value, ts) VALUES (?, ?, ?, ?, ?)", rows)
                self.db.executemany("UPDATE runs SET heartbeat_at = ? WHERE id = ?", [(now, r) for r in {r[0] for r in rows}])

    # runs whose process died -------------------------------------------------
    def stale_runs(self) -> list[RunInfo]:
        """`running` runs whose recorded process is gone (never one whose process lives or cannot be judged)."""
        rows = self.db.query(
            "SELECT r.*, e.name AS experiment FROM runs r JOIN experiments e ON e.id = r.experiment_id "
            "WHERE r.status = 'running' AND r.pid IS NOT NULL ORDER BY r.started_at"
        )
        dead = [r for r in rows if process.is_alive(process.ProcessIdentity(r["pid"], r["pid_started"], r["host"])) is False]
        return [self._info(r) for r in dead]

    def untracked_runs(self) -> list[RunInfo]:
        """`running` runs recorded without a process (by an older mlbox): nothing can tell whether they live."""
        rows = self.db.query(
            "SELECT r.*, e.name AS experiment FROM runs r JOIN experiments e ON e.id = r.experiment_id "
            "WHERE r.status = 'running' AND r.pid IS NULL ORDER BY r.started_at"
        )
        return [self._info(r) for r in rows]

    def mark_killed(self, runs: Iterable[RunInfo]) -> list[str]:
        """Mark these runs `killed` (those still `running`); the ids marked."""
        marked = []
        for run in runs:
            error = f"process {run.pid} on {run.host} ended without ending the run (last heartbeat {run.heartbeat_at})"
            with self.db.atomic():
                row = self.db.one("SELECT status FROM runs WHERE id = ?", (run.id,))
                if row is None or row["status"] != "running":
                    continue
                self.finish(run.id, "killed", error, actor=REAPER)
            marked.append(run.id)
        return marked

    def reap(self) -> list[str]:
        """Mark every run whose process died `killed`; the ids marked."""
        return self.mark_killed(self.stale_runs())

    def artifact_hashes(self) -> set[str]:
        """The sha256 of every artifact a run names."""
        return {r["sha256"] for r in self.db.query("SELECT DISTINCT sha256 FROM run_artifacts")}

    def log_artifact(self, run_id: str, path: Path, name: str | None = None) -> dict[str, Any]:
        if not path.is_file():
            raise UsageError(f"artifact {path} is not a file")
        art = self.artifacts.put(path)
        with self.db.atomic():
            owner = self.db.scalar("SELECT user FROM runs WHERE id = ?", (run_id,))
            if owner is None:
                raise NotFound(f"no run {run_id!r}")
            self.db.execute(
                "INSERT OR REPLACE INTO run_artifacts (run_id, name, sha256, size) VALUES (?, ?, ?, ?)",
                (run_id, name or path.name, art.sha256, art.size),
            )
            self.audit.record(owner, "runs.artifact", f"run:{run_id}", {"name": name or path.name, "sha256": art.sha256, "size": art.size})
        return {"name": name or path.name, "sha256": art.sha256, "size": art.size}

    # reading --------------------------------------------------------------
    def run(self, run_id: str) -> RunInfo:
        rows = self.db.query(
            "SELECT r.*, e.name AS experiment FROM runs r JOIN experiments e ON e.id = r.experiment_id "
            "WHERE r.id = ? OR r.id LIKE ? ORDER BY r.started_at DESC LIMIT 2",
            (run_id, run_id.replace("%", "").replace("_", "") + "%"),
        )
        if not rows:
            raise NotFound(f"no run {run_id!r}", hint="`mlbox runs list` shows run ids")
        if len(rows) > 1 and rows[0]["id"] != run_id:
            raise UsageError(f"run id prefix {run_id!r} is ambiguous")
        return self._info(rows[0])

    def _info(self, r: dict[str, Any]) -> RunInfo:
        return RunInfo(
            id=r["id"],
            experiment=r["experiment"],
            name=r["name"],
            status=r["status"],
            user=r["user"],
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            duration_s=r["duration_s"],
            device=r["device"],
            params=json.loads(r["params"]),
            tags=json.loads(r["tags"]),
            environment=json.loads(r["environment"]),
            env_hash=r["env_hash"],
            code_rev=r["code_rev"],
            code_dirty=None if r["code_dirty"] is None else bool(r["code_dirty"]),
            dataset_fingerprint=r["dataset_fingerprint"],
            feature_views=json.loads(r["feature_views"]),
            error=r["error"],
            pid=r["pid"],
            host=r["host"],
            heartbeat_at=r["heartbeat_at"],
        )

    def runs(self, experiment: str | None = None, status: str | None = None, limit: int = 50) -> list[RunInfo]:
        where, params = ["1=1"], []
        if experiment:
            where.append("e.name = ?")
            params.append(experiment)
        if status:
            where.append("r.status = ?")
            params.append(status)
        rows = self.db.query(
            "SELECT r.*, e.name AS experiment FROM runs r JOIN experiments e ON e.id = r.experiment_id "
            f"WHERE {' AND '.join(where)} ORDER BY r.started_at DESC LIMIT ?",
            [*params, int(limit)],
        )
        return [self._info(r) for r in rows]

    def latest_metrics(self, run_ids: Iterable[str]) -> dict[str, dict[str, float | None]]:
        """The last logged value (highest step) of every metric, per run."""
        ids = list(run_ids)
        out: dict[str, dict[str, float | None]] = {i: {} for i in ids}
        if not ids:
            return out
        rows = self.db.query(
            f"SELECT run_id, key, value FROM (SELECT run_id, key, value, row_number() OVER "
            f"(PARTITION BY run_id, key ORDER BY step DESC, rowid DESC) AS n FROM metrics WHERE run_id IN "
            f"({','.join('?' * len(ids))})) WHERE n = 1",
            ids,
        )
        for r in rows:
            out[r["run_id"]][r["key"]] = r["value"]
        return out

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float | None]]:
        rows = self.db.query("SELECT step, value FROM metrics WHERE run_id = ? AND key = ? ORDER BY step, rowid", (run_id, key))
        return [(r["step"], r["value"]) for r in rows]

    def run_artifacts(self, run_id: str) -> list[dict[str, Any]]:
        return self.db.query("SELECT name, sha256, size FROM run_artifacts WHERE run_id = ? ORDER BY name", (run_id,))


def clean_metric(value: float) -> float | None:
    """Metric values as stored: floats, NaN/inf as NULL (SQLite has no NaN)."""
    v = float(value)
    return v if math.isfinite(v) else None
