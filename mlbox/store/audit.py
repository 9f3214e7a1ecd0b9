"""The append-only, tamper-evident audit log in meta.db.

Each entry stores the hash of the previous entry and its own hash, an HMAC-SHA256 (key in
`keys/audit.key`) over the previous hash and the entry's canonical JSON. A head row
(last seq, last hash) is updated in the same transaction. `verify` walks the chain and
names the first entry that was edited, deleted or moved, and notices entries cut off the
end. Triggers refuse UPDATE and DELETE, so only a deliberate hand edit can change a row,
and the HMAC means whoever edits it cannot recompute the chain without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbox import clock
from mlbox.store.sqlite import Database

GENESIS = "0" * 64


def load_or_create_key(path: Path) -> bytes:
    """The box's audit HMAC key, created 0600 on first use."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # fails if another process created the key first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def _digest(key: bytes, prev_hash: str, seq: int, ts: str, actor: str, action: str, target: str, details: str) -> str:
    body = json.dumps([seq, ts, actor, action, target, details], separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, f"{prev_hash}\n{body}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "details": self.details,
        }


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    bad_seq: int | None = None
    problem: str = ""


class AuditLog:
    """Append and verify. `record` joins the caller's transaction when there is one."""

    def __init__(self, db: Database, key: bytes) -> None:
        self.db = db
        self.key = key

    def record(self, actor: str, action: str, target: str = "", details: dict[str, Any] | None = None) -> int:
        text = json.dumps(details or {}, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
        with self.db.atomic():
            head = self.db.one("SELECT seq, hash FROM audit_head WHERE id = 1")
            seq, prev = (head["seq"] + 1, head["hash"]) if head else (1, GENESIS)
            ts = clock.iso()
            digest = _digest(self.key, prev, seq, ts, actor, action, target, text)
            self.db.execute(
                "INSERT INTO audit (seq, ts, actor, action, target, details, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?)",
                (seq, ts, actor, action, target, text, prev, digest),
            )
            self.db.execute(
                "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
                (seq, digest, self._head_mac(seq, digest)),
            )
        return seq

    def _head_mac(self, seq: int, digest: str) -> str:
        return hmac.new(self.key, f"head\n{seq}\n{digest}".encode(), hashlib.sha256).hexdigest()

    def entries(
        self,
        *,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: str | None = None,
    ) -> list[AuditEntry]:
        """Newest first, filtered; `action` matches a prefix (`auth.` finds every auth action)."""
        where, params = ["1=1"], []
        if actor:
            where.append("actor = ?")
            params.append(actor)
        if action:
            where.append("(action = ? OR action LIKE ? ESCAPE '\\')")
            params += [action, action.replace("%", "\\%").replace("_", "\\_") + "%"]
        if target:
            where.append("target = ?")
            params.append(target)
        if since:
            where.append("ts >= ?")
            params.append(since)
        rows = self.db.query(
            f"SELECT seq, ts, actor, action, target, details FROM audit WHERE {' AND '.join(where)} "
            "ORDER BY seq DESC LIMIT ?",
            [*params, int(limit)],
        )
        return [
            AuditEntry(r["seq"], r["ts"], r["actor"], r["action"], r["target"], json.loads(r["details"])) for r in rows
        ]

    def _rows(self) -> Iterator[dict[str, Any]]:
        cursor = self.db.conn.execute(
            "SELECT seq, ts, actor, action, target, details, prev_hash, hash FROM audit ORDER BY rowid"
        )
        while batch := cursor.fetchmany(5000):
            yield from (dict(r) for r in batch)

    def verify(self) -> VerifyResult:
        """Walk the whole chain in storage order; the first problem found is reported."""
        prev, expected_seq, checked = GENESIS, 1, 0
        with self.db.snapshot():  # one consistent read while writers go on
            head = self.db.one("SELECT seq, hash, mac FROM audit_head WHERE id = 1")
            for row in self._rows():
                seq = row["seq"]
                if seq != expected_seq:
                    return VerifyResult(False, checked, expected_seq, f"entry {expected_seq} is missing (deleted)")
                if row["prev_hash"] != prev:
                    return VerifyResult(
                        False, checked, seq, f"entry {seq} does not link to entry {seq - 1} (entries deleted or reordered)"
                    )
                digest = _digest(
                    self.key, prev, seq, row["ts"], row["actor"], row["action"], row["target"], row["details"]
                )
                if not hmac.compare_digest(digest, row["hash"]):
                    return VerifyResult(False, checked, seq, f"entry {seq} does not match its hash (edited)")
                prev, expected_seq, checked = row["hash"], seq + 1, checked + 1
            if head is None:
                if checked:
                    return VerifyResult(False, checked, None, "the audit head record is missing")
                return VerifyResult(True, 0)
            if not hmac.compare_digest(head["mac"], self._head_mac(head["seq"], head["hash"])):
                return VerifyResult(False, checked, checked + 1, "the audit head record was edited by hand")
            if head["seq"] != checked or head["hash"] != prev:
                return VerifyResult(
                    False,
                    checked,
                    checked + 1,
                    f"the log ends at entry {checked} but the head records entry {head['seq']} (entries cut off the end)",
                )
        return VerifyResult(True, checked)
