"""Monitoring's SQL: checks run, policies per deployment, actions taken; and the deployment rows it reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlbox import clock
from mlbox.errors import NotFound
from mlbox.store.sqlite import Database


@dataclass(frozen=True)
class Deployed:
    """What a deployment serves now, as monitoring needs it (the deployments table belongs to serving)."""

    name: str
    primary: str
    canary: str | None
    canary_weight: float

    def variants(self) -> dict[str, str]:
        """variant -> model reference, for the variants that serve traffic (a canary at weight 0 still counts)."""
        out = {"primary": self.primary}
        if self.canary:
            out["canary"] = self.canary
        return out


class Records:
    """The monitor tables in meta.db (migration 0011_monitoring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def deployed(self, name: str) -> Deployed:
        row = self.db.one("SELECT name, primary_model, canary_model, canary_weight FROM deployments WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no deployment {name!r}", hint="`mlbox deploy status` lists deployments")
        return Deployed(row["name"], row["primary_model"], row["canary_model"], float(row["canary_weight"]))

    def deployments(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM deployments ORDER BY name")]

    # checks ------------------------------------------------------------------
    def add_check(self, deployment: str, kind: str, result: dict[str, Any], verdict: str, actor: str) -> int:
        with self.db.atomic():
            return int(self.db.execute(
                "INSERT INTO monitor_checks (deployment, kind, checked_at, window, verdict, result, checked_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (deployment, kind, result.get("checked_at") or clock.iso(), json.dumps(result.get("window") or {}), verdict,
                 json.dumps(result, allow_nan=False), actor),
            ).lastrowid or 0)  # fmt: skip

    def check(self, check_id: int) -> dict[str, Any] | None:
        """One stored result by its id, with its deployment, kind and who checked it; None when there is none."""
        row = self.db.one(
            "SELECT id, deployment, kind, verdict, checked_by, result FROM monitor_checks WHERE id = ?", (check_id,)
        )
        if row is None:
            return None
        head = {k: row[k] for k in ("id", "deployment", "kind", "verdict", "checked_by")}
        return {**json.loads(row["result"]), **head}

    def checks(self, deployment: str, kind: str = "drift", limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` results of one kind, oldest first."""
        rows = self.db.query(
            "SELECT id, result FROM monitor_checks WHERE deployment = ? AND kind = ? ORDER BY id DESC LIMIT ?",
            (deployment, kind, limit),
        )
        return [{"id": r["id"], **json.loads(r["result"])} for r in reversed(rows)]

    def latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(deployment, kind) -> the newest result, for every deployment that has one."""
        rows = self.db.query(
            "SELECT deployment, kind, result FROM monitor_checks WHERE id IN "
            "(SELECT max(id) FROM monitor_checks GROUP BY deployment, kind)"
        )
        return {(r["deployment"], r["kind"]): json.loads(r["result"]) for r in rows}

    # policies ----------------------------------------------------------------
    def set_policy(self, deployment: str, policy: dict[str, Any], source: str, actor: str, next_run: float | None) -> None:
        self.db.execute(
            "INSERT INTO monitor_policies (deployment, policy, source, next_run, updated_at, updated_by) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (deployment) DO UPDATE SET policy = excluded.policy, source = excluded.source, "
            "next_run = excluded.next_run, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            (deployment, json.dumps(policy), source, next_run, clock.iso(), actor),
        )

    def remove_policy(self, deployment: str) -> bool:
        return bool(self.db.execute("DELETE FROM monitor_policies WHERE deployment = ?", (deployment,)).rowcount)

    def policies(self) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT * FROM monitor_policies ORDER BY deployment")
        return [{**r, "policy": json.loads(r["policy"])} for r in rows]

    def policy(self, deployment: str) -> dict[str, Any] | None:
        row = self.db.one("SELECT * FROM monitor_policies WHERE deployment = ?", (deployment,))
        return None if row is None else {**row, "policy": json.loads(row["policy"])}

    def claim_due(self, deployment: str, seen: float, next_run: float) -> bool:
        """Move a due schedule on (compare-and-set: one of several workers wins)."""
        cur = self.db.execute(
            "UPDATE monitor_policies SET next_run = ? WHERE deployment = ? AND next_run <= ?", (next_run, deployment, seen)
        )
        return bool(cur.rowcount)

    # actions -----------------------------------------------------------------
    def add_action(self, deployment: str, action: str, status: str, reason: str, evidence: dict[str, Any],
                   job_id: int | None = None, model: str | None = None) -> int:  # fmt: skip
        return int(self.db.execute(
            "INSERT INTO monitor_actions (deployment, action, at, status, reason, evidence, job_id, model) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (deployment, action, clock.iso(), status, reason, json.dumps(evidence, default=str), job_id, model),
        ).lastrowid or 0)  # fmt: skip

    def actions(self, deployment: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT * FROM monitor_actions WHERE deployment = ? ORDER BY id DESC LIMIT ?", (deployment, limit))
        return [{**r, "evidence": json.loads(r["evidence"])} for r in reversed(rows)]
