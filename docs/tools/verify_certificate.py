#!/usr/bin/env python3
"""Verify an mlbox erasure certificate (`mlbox privacy erase --certificate PATH`) without mlbox.

Checks the Ed25519 signature over the payload's canonical JSON (sorted keys, no spaces, ASCII) with
the `cryptography` package when importable; otherwise `--extract DIR` writes the signed bytes, the
signature and the public key for openssl (the command is printed). Pin the box's key with
`--public-key-fingerprint` (printed by `mlbox privacy erase` and `mlbox audit export`). See docs/privacy.md.

Exit status: 0 verified (with --extract and no `cryptography`: run the openssl step), 1 the
certificate fails verification, 2 unreadable, 3 the signature was not checked.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

FORMAT = "mlbox-erasure-certificate/1"
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # DER prefix of an Ed25519 public key (RFC 8410)


class Failed(Exception):
    """The certificate does not verify."""


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def raw_public_key(pem: str) -> bytes:
    lines = [line.strip() for line in pem.strip().splitlines()]
    if not lines or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise Failed("the certificate's public key is not a PEM public key")
    der = base64.b64decode("".join(lines[1:-1]))
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        raise Failed("the certificate's public key is not an Ed25519 key")
    return der[len(ED25519_SPKI_PREFIX):]


def check_signature(message: bytes, signature: bytes, raw_key: bytes) -> bool | None:
    """True when valid; None when `cryptography` is not installed."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return None
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, message)
    except InvalidSignature:
        raise Failed("the Ed25519 signature does not match the certificate (edited or signed by another key)") from None
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an mlbox erasure certificate.")
    parser.add_argument("certificate", type=Path)
    parser.add_argument("--public-key-fingerprint", help="the box's signing key fingerprint, obtained out of band")
    parser.add_argument("--extract", type=Path, metavar="DIR", help="write payload.bin, signature.bin, public.pem")
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.certificate.read_text(encoding="utf-8"))
        payload, signature = document["payload"], base64.b64decode(document["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"FAIL: cannot read {args.certificate}: {exc}", file=sys.stderr)
        return 2
    try:
        if payload.get("format") != FORMAT:
            raise Failed(f"unknown certificate format {payload.get('format')!r}")
        pem = payload["public_key"]["pem"]
        raw = raw_public_key(pem)
        fingerprint = hashlib.sha256(raw).hexdigest()
        if payload["public_key"].get("fingerprint_sha256") != fingerprint:
            raise Failed("the stated fingerprint does not match the certificate's public key")
        if args.public_key_fingerprint is not None:
            pinned = args.public_key_fingerprint.replace(":", "").strip().lower()
            if pinned != fingerprint:
                raise Failed(f"the certificate was signed by key {fingerprint}, not the pinned {pinned}")
        message = canonical(payload)
        if args.extract is not None:
            args.extract.mkdir(parents=True, exist_ok=True)
            (args.extract / "payload.bin").write_bytes(message)
            (args.extract / "signature.bin").write_bytes(signature)
            (args.extract / "public.pem").write_text(pem, encoding="ascii")
        checked = check_signature(message, signature, raw)
    except (KeyError, TypeError, AttributeError) as exc:
        print(f"FAIL: the certificate is malformed (missing or wrong field {exc})", file=sys.stderr)
        return 1
    except Failed as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    totals = ", ".join(f"{k} {v}" for k, v in sorted(payload.get("totals", {}).items()))
    print(f"erasure of subject {payload['subject']['pseudonym'][:16]} at {payload['erased_at']} by {payload['erased_by']}: {totals}")
    if checked:
        print(f"signature OK (key {fingerprint})")
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
