"""Signed audit evidence bundles: the entries of a time range, their chain and head, Ed25519-signed.

The chain's hashes are HMACs an auditor cannot recompute without the box's secret key, so the
bundle adds a public SHA-256 chain over the exported rows and signs the whole payload with an
Ed25519 key in `keys/audit-sign.key` (0600, created on first export). The auditor pins the public
key's fingerprint out of band and checks everything with `docs/tools/verify_evidence.py` and
openssl: no mlbox needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbox import clock
from mlbox.errors import NotFound, StoreError, UsageError
from mlbox.store.audit import GENESIS, AuditLog, write_once

FORMAT = "mlbox-audit-evidence/1"
ROW_FIELDS = ("seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash")


def canonical(value: Any) -> bytes:
    """The signed byte form: sorted keys, no spaces, ASCII only (the verifier re-creates it exactly)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def entry_sha256(prev: str, row: dict[str, Any]) -> str:
    """The public chain link: SHA-256 over the previous link and the row's stored fields."""
    body = json.dumps([row[f] for f in ROW_FIELDS], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev}\n{body}".encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Evidence:
    """One written bundle: where, how many entries, and the signing key's fingerprint."""

    path: Path
    first_seq: int
    last_seq: int
    fingerprint: str


def load_signing_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    fresh = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = write_once(path, fresh)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise StoreError(f"{path} is not an Ed25519 private key: {exc}", hint="move it aside to create a new one") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreError(f"{path} is not an Ed25519 private key", hint="move it aside to create a new one")
    return key


def public_key_info(key: Any) -> tuple[str, str]:
    """(PEM of the public key, its fingerprint: SHA-256 hex of the 32 raw key bytes)."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii"), hashlib.sha256(raw).hexdigest()


def _check_iso(text: str | None, option: str) -> str | None:
    if text is None:
        return None
    try:
        return clock.iso(clock.parse_iso(text))
    except ValueError:
        raise UsageError(f"{option} {text!r} is not an ISO-8601 time", hint="e.g. 2026-11-01 or 2026-11-01T12:00:00Z") from None


def export(log: AuditLog, signing_key: Path, out: Path, *, since: str | None, until: str | None) -> Evidence:
    """Write a signed bundle of the entries with since <= ts < until; refuses a log that does not verify."""
    since, until = _check_iso(since, "--since"), _check_iso(until, "--until")
    result = log.verify()
    if not result.ok:
        raise StoreError(
            f"the audit log does not verify (entry {result.bad_seq}: {result.problem})",
            hint="run `mlbox audit verify`; evidence is only exported from an intact chain",
        )
    with log.db.snapshot():
        span = log.seq_range(since, until)
        if span is None:
            raise NotFound("no audit entries in that time range", hint="widen --since/--until")
        rows = log.rows_between(*span)
        head = log.head()
        before = log.rows_between(span[0] - 1, span[0] - 1)
    if head is None:
        raise StoreError("the audit head record is missing", hint="run `mlbox audit verify`")
    link_hash: str = before[0]["hash"] if before else GENESIS
    link = {"seq": span[0] - 1, "hash": link_hash}
    private = load_signing_key(signing_key)
    public_pem, fingerprint = public_key_info(private)
    prev, entries = link_hash, []
    for row in rows:
        prev = entry_sha256(prev, row)
        entries.append({**{f: row[f] for f in ROW_FIELDS}, "sha256": prev})
    payload = {
        "format": FORMAT,
        "created_at": clock.iso(),
        "since": since,
        "until": until,
        "link": link,
        "entries": entries,
        "chain_sha256": prev,
        "head": {"seq": head["seq"], "hash": head["hash"]},
        "public_key": {"algorithm": "Ed25519", "pem": public_pem, "fingerprint_sha256": fingerprint},
    }
    signature = private.sign(canonical(payload))
    bundle = {"payload": payload, "signature": base64.b64encode(signature).decode("ascii")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(bundle, indent=1, ensure_ascii=True) + "\n", encoding="ascii")
    tmp.replace(out)
    return Evidence(path=out, first_seq=span[0], last_seq=span[1], fingerprint=fingerprint)
