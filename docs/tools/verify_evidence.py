#!/usr/bin/env python3
"""Verify an mlbox audit evidence bundle (`mlbox audit export`) without mlbox.

Needs only the Python standard library for the chain. The Ed25519 signature is checked here
when the `cryptography` package is importable; otherwise pass `--extract DIR` and check it with
openssl (the command is printed). See docs/audit.md.

Exit status: 0 verified (with --extract and no `cryptography`: chain verified, run the openssl
step), 1 the bundle fails verification, 2 bad usage or unreadable bundle, 3 chain verified but
the signature was not checked.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

FORMAT = "mlbox-audit-evidence/1"
GENESIS = "0" * 64
ROW_FIELDS = ("seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash")
# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the 32 raw key bytes follow it
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class Failed(Exception):
    """The bundle does not verify."""


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def entry_sha256(prev: str, row: dict[str, Any]) -> str:
    body = json.dumps([row[f] for f in ROW_FIELDS], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev}\n{body}".encode("ascii")).hexdigest()


def raw_public_key(pem: str) -> bytes:
    lines = [line.strip() for line in pem.strip().splitlines()]
    if not lines or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise Failed("the bundle's public key is not a PEM public key")
    der = base64.b64decode("".join(lines[1:-1]))
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        raise Failed("the bundle's public key is not an Ed25519 key")
    return der[len(ED25519_SPKI_PREFIX):]


def check_chain(payload: dict[str, Any]) -> int:
    """Recompute every entry's SHA-256 link and the HMAC chain's links; the number of entries."""
    if payload.get("format") != FORMAT:
        raise Failed(f"unknown bundle format {payload.get('format')!r}")
    link, entries, head = payload["link"], payload["entries"], payload["head"]
    if not entries:
        raise Failed("the bundle holds no entries")
    if link["seq"] == 0 and link["hash"] != GENESIS:
        raise Failed("entry 1 must link to the genesis hash")
    prev_seq, prev_hash, prev_sha = link["seq"], link["hash"], link["hash"]
    for entry in entries:
        seq = entry["seq"]
        if seq != prev_seq + 1:
            raise Failed(f"entry {prev_seq + 1} is missing from the bundle (found {seq})")
        if entry["prev_hash"] != prev_hash:
            raise Failed(f"entry {seq} does not link to entry {prev_seq}")
        sha = entry_sha256(prev_sha, entry)
        if sha != entry["sha256"]:
            raise Failed(f"entry {seq} does not match its SHA-256 (edited)")
        prev_seq, prev_hash, prev_sha = seq, entry["hash"], sha
    if payload["chain_sha256"] != prev_sha:
        raise Failed("the chain's final SHA-256 does not match the entries")
    if head["seq"] < prev_seq or (head["seq"] == prev_seq and head["hash"] != prev_hash):
        raise Failed(f"the head (entry {head['seq']}) does not match the last entry {prev_seq}")
    if payload.get("until") is None and (head["seq"], head["hash"]) != (prev_seq, prev_hash):
        raise Failed(f"the bundle ends at entry {prev_seq} but the head records entry {head['seq']} (cut off)")
    return len(entries)


def check_signature(message: bytes, signature: bytes, raw_key: bytes) -> bool | None:
    """True when valid; None when `cryptography` is not installed (check with openssl instead)."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return None
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, message)
    except InvalidSignature:
        raise Failed("the Ed25519 signature does not match the bundle (edited or signed by another key)") from None
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an mlbox audit evidence bundle.")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--public-key-fingerprint", help="the SHA-256 fingerprint you obtained out of band")
    parser.add_argument("--extract", type=Path, metavar="DIR", help="write payload.bin, signature.bin, public.pem")
    args = parser.parse_args(argv)
    try:
        bundle = json.loads(args.bundle.read_text(encoding="utf-8"))
        payload, signature = bundle["payload"], base64.b64decode(bundle["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"FAIL: cannot read {args.bundle}: {exc}", file=sys.stderr)
        return 2
    try:
        count = check_chain(payload)
        pem = payload["public_key"]["pem"]
        raw = raw_public_key(pem)
        fingerprint = hashlib.sha256(raw).hexdigest()
        if payload["public_key"].get("fingerprint_sha256") != fingerprint:
            raise Failed("the stated fingerprint does not match the bundle's public key")
        if args.public_key_fingerprint is not None:
            pinned = args.public_key_fingerprint.replace(":", "").strip().lower()
            if pinned != fingerprint:
                raise Failed(f"the bundle was signed by key {fingerprint}, not the pinned {pinned}")
        message = canonical(payload)
        if args.extract is not None:
            args.extract.mkdir(parents=True, exist_ok=True)
            (args.extract / "payload.bin").write_bytes(message)
            (args.extract / "signature.bin").write_bytes(signature)
            (args.extract / "public.pem").write_text(pem, encoding="ascii")
        checked = check_signature(message, signature, raw)
    except (KeyError, TypeError) as exc:
        print(f"FAIL: the bundle is malformed (missing or wrong field {exc})", file=sys.stderr)
        return 1
    except Failed as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    first, last = payload["entries"][0]["seq"], payload["entries"][-1]["seq"]
    print(f"chain OK: {count} entries ({first}..{last}), head {payload['head']['seq']}, key {fingerprint}")
    if checked:
        print("signature OK")
        return 0
    if args.extract is not None:
        d = args.extract
        print("signature not checked here (no `cryptography`); now run:")
        print(f"openssl pkeyutl -verify -pubin -inkey {d}/public.pem -rawin -in {d}/payload.bin -sigfile {d}/signature.bin")
        return 0
    print("signature NOT checked: install `cryptography` or rerun with --extract DIR and use openssl", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
