"""The append-only, tamper-evident audit log in meta.db.

Each entry stores the hash of the previous entry and its own hash, an HMAC-SHA256 (key in
`keys/audit.key`) over the previous hash and the entry's canonical JSON. A head row
(last seq, last hash) is updated in the same transaction. `verify` walks the chain and
names the first entry that was edited, deleted or moved, and notices entries cut off the
end. Triggers refuse UPDATE and DELETE, so only a deliberate hand edit can change a row,
and the HMAC means whoever edits it cannot recompute the chain without the key.

The head lives in the same file as the entries, so deleting every row and the head would
leave an empty log that looks new. `keys/audit.anchor` (next to the key, outside meta.db,
written once the first entry is committed) records entry 1's hash under the key's MAC:
while it exists, an empty or headless log fails verification.

Several processes append at once (CLI commands, `mlbox serve`, the worker and its job
processes): `record` reads the head and writes the entry and the new head inside one
`BEGIN IMMEDIATE` transaction (`Database.atomic`), so the head it links to cannot move before
it commits, and `seq` is the table's primary key, so two writers can never both claim one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from mlbox import clock
from mlbox.store.sqlite import Database

GENESIS = "0" * 64


def write_once(path: Path, data: bytes) -> bytes:
    """Create `path` 0600 with `data` unless it exists; the content that won (another process may race)."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # fails if another process created the file first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def load_or_create_key(path: Path) -> bytes:
    """The box's audit HMAC key, created 0600 on first use."""
    return write_once(path, secrets.token_bytes(32))


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

    def __init__(self, db: Database, key: bytes, *, anchor: Path | None = None) -> None:
        self.db = db
        self.key = key
        # by default the anchor sits in the box's keys/ folder next to meta.db (see BoxPaths)
        keys = db.path.parent / "keys"
        self.anchor = anchor if anchor is not None else (keys / "audit.anchor" if keys.is_dir() else None)
        self._suppressed: dict[tuple[str, str, str], int] = {}

    @classmethod
    def beside(cls, db: Database) -> AuditLog:
        """The log of the box whose meta.db is `db`, keyed by `keys/audit.key` next to it (created if missing)."""
        return cls(db, load_or_create_key(db.path.parent / "keys" / "audit.key"))

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
        if not self.db.conn.in_transaction:  # inside a caller's transaction entry 1 may still roll back
            self._ensure_anchor()
        return seq

    def record_throttled(
        self,
        actor: str,
        action: str,
        target: str = "",
        details: dict[str, Any] | None = None,
        *,
        every_s: float = 60.0,
    ) -> int | None:
        """Record unless the same (actor, action, target) was recorded in the last `every_s` seconds.

        For events an attacker can repeat cheaply (permission refusals, token logins): one entry per
        window instead of a flood. The check reads the log, so it holds across processes; the next
        entry written carries `suppressed`, how many this process skipped meanwhile. The newest seq, or None.
        """
        since = clock.iso(clock.now() - timedelta(seconds=every_s))
        key = (actor, action, target)
        recent = self.db.scalar(
            "SELECT 1 FROM audit WHERE action = ? AND actor = ? AND target = ? AND ts > ? LIMIT 1",
            (action, actor, target, since),
        )
        if recent:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        skipped = self._suppressed.pop(key, 0)
        return self.record(actor, action, target, {**(details or {}), **({"suppressed": skipped} if skipped else {})})

    def _head_mac(self, seq: int, digest: str) -> str:
        return hmac.new(self.key, f"head\n{seq}\n{digest}".encode(), hashlib.sha256).hexdigest()

    def _anchor_mac(self, first_hash: str) -> str:
        return hmac.new(self.key, f"anchor\n1\n{first_hash}".encode(), hashlib.sha256).hexdigest()

    def _ensure_anchor(self) -> None:
        """Write the anchor once entry 1 is committed (a stat per record after that)."""
        if self.anchor is None or self.anchor.exists():
            return
        first = self.db.one("SELECT hash FROM audit WHERE seq = 1")
        if first is None:
            return
        body = {"seq": 1, "hash": first["hash"], "mac": self._anchor_mac(first["hash"])}
        write_once(self.anchor, json.dumps(body, sort_keys=True).encode())

    def _read_anchor(self) -> dict[str, Any] | None:
        """The anchor's content, or a marker dict with `bad` when it cannot be trusted."""
        if self.anchor is None or not self.anchor.exists():
            return None
        try:
            body = json.loads(self.anchor.read_bytes())
            ok = isinstance(body, dict) and hmac.compare_digest(str(body["mac"]), self._anchor_mac(str(body["hash"])))
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        return body if ok else {"bad": True}

    def head(self) -> dict[str, Any] | None:
        """The head row (seq, hash, mac) as stored, or None."""
        return self.db.one("SELECT seq, hash, mac FROM audit_head WHERE id = 1")

    def rows_between(self, first: int, last: int) -> list[dict[str, Any]]:
        """Stored rows with first <= seq <= last, in seq order, exactly as stored (details as text)."""
        return self.db.query(
            "SELECT seq, ts, actor, action, target, details, prev_hash, hash FROM audit "
            "WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (first, last),
        )

    def seq_range(self, since: str | None, until: str | None) -> tuple[int, int] | None:
        """The first and last seq with since <= ts < until, or None when no entry is in range."""
        row = self.db.one(
            "SELECT min(seq) AS lo, max(seq) AS hi FROM audit WHERE (? IS NULL OR ts >= ?) AND (? IS NULL OR ts < ?)",
            (since, since, until, until),
        )
        if row is None or row["lo"] is None:
            return None
        return int(row["lo"]), int(row["hi"])

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
        result = self._verify()
        if result.ok and result.checked:
            self._ensure_anchor()  # boxes written before the anchor existed get one now
        return result

    def _verify(self) -> VerifyResult:
        prev, expected_seq, checked = GENESIS, 1, 0
        anchor = self._read_anchor()
        bad_anchor = anchor is not None and bool(anchor.get("bad"))
        with self.db.snapshot():  # one consistent read while writers go on
            head = self.head()
            for row in self._rows():
                if anchor is not None and not bad_anchor and row["seq"] == 1 and not hmac.compare_digest(row["hash"], anchor["hash"]):
                    return VerifyResult(False, 0, 1, "entry 1 is not the entry the audit anchor recorded (log replaced)")
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
                if anchor is not None:
                    return VerifyResult(
                        False, 0, 1, "the audit log was emptied: entries were written but no entries and no head remain"
                    )
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
        if bad_anchor:
            return VerifyResult(False, checked, None, f"the audit anchor {self.anchor} was edited or does not match this key")
        return VerifyResult(True, checked)
