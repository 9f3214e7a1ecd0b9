"""Erasure certificates: the subject's keyed pseudonym, and the signed JSON document and its verification.

The certificate is signed with the box's Ed25519 evidence key (`keys/audit-sign.key`, the one
`mlbox audit export` signs with; mlbox.store.evidence), over the same canonical JSON form, so an
auditor checks it with `python3 docs/tools/verify_certificate.py CERT --public-key-fingerprint FP`
and no mlbox. The subject is named by `subject_id`: an HMAC-SHA256 of its keys with the box's
secret audit key. A plain hash of `customer_id=123` would be reversed by trying every id; the HMAC
can be recomputed only by the box, so the box can tell "this subject was erased" without keeping
the value. The clear keys appear only in the copy written to `--certificate PATH` (outside the
signed payload, bound to it by the pseudonym), which the controller keeps outside the box.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlbox.errors import ValidationError
from mlbox.store import crypt
from mlbox.store.evidence import canonical, load_signing_key, public_key_info

FORMAT = "mlbox-erasure-certificate/1"


def subject_id(box_key: bytes, values: Mapping[str, Any]) -> str:
    """The subject's pseudonym: HMAC-SHA256 (box key) of its sorted `key=value` pairs, hex."""
    text = json.dumps({k: str(v) for k, v in sorted(values.items())}, sort_keys=True, separators=(",", ":"))
    return hmac.new(box_key, b"mlbox-erasure-subject/1\n" + text.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(payload: dict[str, Any], signing_key: Path) -> dict[str, Any]:
    """`{"payload": payload + its public key, "signature": base64 Ed25519 over canonical(payload)}`."""
    private = load_signing_key(signing_key)
    pem, fingerprint = public_key_info(private)
    body = {**payload, "format": FORMAT, "public_key": {"algorithm": "Ed25519", "pem": pem, "fingerprint_sha256": fingerprint}}
    return {"payload": body, "signature": base64.b64encode(private.sign(canonical(body))).decode("ascii")}


def verify(document: Mapping[str, Any], fingerprint: str | None = None) -> dict[str, Any]:
    """The payload of a certificate whose signature holds (and, given, whose key has `fingerprint`); else ValidationError."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        payload, signature = dict(document["payload"]), base64.b64decode(document["signature"], validate=True)
        key = serialization.load_pem_public_key(payload["public_key"]["pem"].encode("ascii"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"not an erasure certificate: {exc}") from None
    if payload.get("format") != FORMAT or not isinstance(key, Ed25519PublicKey):
        raise ValidationError("not an mlbox erasure certificate signed with Ed25519")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if fingerprint is not None and hashlib.sha256(raw).hexdigest() != fingerprint.lower():
        raise ValidationError("the certificate is signed by another key than the one pinned")
    try:
        key.verify(signature, canonical(payload))
    except InvalidSignature:
        raise ValidationError("the certificate's signature does not verify: it was changed after signing") from None
    return payload


def write(path: Path, document: Mapping[str, Any], subject: Mapping[str, Any]) -> Path:
    """Write the certificate with the subject's clear keys beside the signed payload (the controller's copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    body = {**document, "subject": {k: v for k, v in sorted(subject.items())}}
    # it names the subject: sealed if it is written into an encrypted box's stores (plain where the user asks)
    crypt.write_bytes(tmp, (json.dumps(body, indent=1, ensure_ascii=True, default=str) + "\n").encode("ascii"))
    tmp.replace(path)
    return path
