"""TLS material for `mlbox serve`: self-signed trial certificates and checks of a certificate/key pair."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlbox.errors import Conflict, NotFound, UsageError, ValidationError

CERT_NAME, KEY_NAME = "cert.pem", "key.pem"
# RFC 1123 labels; a leading "*." allows one wildcard level. Names go into the certificate, so they are checked.
_DNS_NAME = re.compile(r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
MAX_DAYS = 825  # the longest lifetime browsers and macOS accept for a server certificate


@dataclass(frozen=True)
class CertInfo:
    """A checked certificate/key pair: where it lies, the names it covers and its validity window."""

    cert: Path
    key: Path
    hosts: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    sha256: str

    def expired(self, now: datetime) -> bool:
        return not (self.not_before <= now <= self.not_after)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cert": str(self.cert), "key": str(self.key), "hosts": list(self.hosts),
            "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(), "sha256": self.sha256,
        }  # fmt: skip


def default_hosts() -> list[str]:
    """The names a trial certificate covers unless told: loopback by name and address, and this machine's name."""
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    if hostname and hostname not in names and _DNS_NAME.match(hostname):
        names.append(hostname)
    return names


def _san(hosts: list[str]) -> list[Any]:
    from cryptography import x509

    entries: list[Any] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if len(host) > 253 or not _DNS_NAME.match(host):
                hint = "e.g. --host box.example.com --host 10.0.0.5"
                raise ValidationError(f"{host!r} is neither an IP address nor a DNS name", hint=hint) from None
            entries.append(x509.DNSName(host.lower()))
    return entries


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to a new file readable by its owner only (0600 from the start: no window where others can read)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)  # the umask can only remove bits; this states the intent


def generate_selfsigned(out: Path, hosts: list[str], days: int, now: datetime, *, force: bool = False) -> CertInfo:
    """Write `out/cert.pem` and `out/key.pem` (0600): an ECDSA P-256 key and a self-signed certificate for `hosts`.

    The certificate is its own CA (basicConstraints CA:true, pathlen 0), so a client trusts it by
    being given the file (`httpx.Client(verify=cert)`, `curl --cacert`) and nothing else.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise UsageError("a certificate needs at least one host name or address")
    if not 1 <= days <= MAX_DAYS:
        raise ValidationError(f"--days must be between 1 and {MAX_DAYS}, got {days}")
    hosts = list(dict.fromkeys(hosts))
    san = _san(hosts)
    cert_path, key_path = out / CERT_NAME, out / KEY_NAME
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise Conflict(f"{existing[0]} already exists", hint="pass --force to replace it, or --out another folder")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64]), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mlbox self-signed")]
    )
    # backdated a minute: a client whose clock is slightly behind must not see a certificate from the future
    start = now.astimezone(UTC) - timedelta(minutes=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for path in existing:
        path.unlink()
    write_private(key_path, key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return check_pair(cert_path, key_path)


def _read(path: Path, what: str) -> bytes:
    if not path.exists():
        raise NotFound(f"TLS {what} {path} does not exist", hint="make a trial pair with `mlbox auth selfsigned`")
    if not path.is_file():
        raise UsageError(f"TLS {what} {path} is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read TLS {what} {path}: {exc.strerror}") from None


def check_pair(cert_path: Path, key_path: Path) -> CertInfo:
    """Check a PEM certificate and its private key before a server uses them; one clear error for each fault.

    Refused: a missing or unreadable file, a key that its group or others may read, a file that is
    not PEM of the right kind, a passphrase-protected key (the server could not start unattended),
    and a key that does not belong to the certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    cert_bytes, key_bytes = _read(cert_path, "certificate"), _read(key_path, "key")
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise UsageError(
            f"TLS key {key_path} can be read by its group or others (mode {mode:04o})", hint=f"chmod 600 {key_path}"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError:
        raise ValidationError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except TypeError:
        hint = "mlbox serve needs an unencrypted key file (mode 0600)"
        raise UsageError(f"TLS key {key_path} is protected by a passphrase", hint=hint) from None
    except ValueError:
        raise ValidationError(f"{key_path} is not a PEM private key") from None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        hint = "pass the key the certificate was made for"
        raise ValidationError(f"TLS key {key_path} does not belong to certificate {cert_path}", hint=hint)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = tuple(str(entry.value) for entry in san if isinstance(entry, (x509.IPAddress, x509.DNSName)))
    except x509.ExtensionNotFound:
        hosts = ()
    return CertInfo(
        cert=cert_path, key=key_path, hosts=hosts, not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
    )  # fmt: skip
