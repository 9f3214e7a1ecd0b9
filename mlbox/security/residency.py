"""Data residency: the box's country, where each export/backup/package/webhook destination lies, transfer bases.

A box may record its residency (ISO 3166 alpha-2, e.g. `AE`). Every destination data leaves
through is located here and nowhere else: a local path is in the box's residency unless it lies
under a path prefix an admin declared with another region (a mounted bucket `/mnt/s3-eu` → `DE`);
a webhook host is where the admin declared it, loopback hosts are this machine, and any other
host is `unknown`. A destination outside the residency (or unknown, for webhooks) is refused
unless an admin recorded a transfer basis for that region (optionally limited to a destination
prefix). Every decision names the region and the basis used, for the caller's audit entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlbox import clock
from mlbox.errors import NotFound, PermissionDenied, UsageError
from mlbox.store.audit import AuditLog
from mlbox.store.sqlite import Database

UNKNOWN = "unknown"
_COUNTRY = re.compile(r"[A-Z]{2}")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
DECLARE_HINT = "an admin declares where it is (`mlbox privacy region add DEST --region CC`)"


def country_code(value: str, what: str = "residency") -> str:
    """A normalised ISO 3166 alpha-2 code (`ae` → `AE`); UsageError for anything else."""
    code = value.strip().upper()
    if not _COUNTRY.fullmatch(code):
        raise UsageError(f"{what} {value!r} is not an ISO 3166 alpha-2 country code", hint="write two letters, e.g. AE or DE")
    return code


@dataclass(frozen=True)
class Region:
    """A destination prefix (path) or host an admin declared to lie in `region`."""

    kind: str  # "path" or "host"
    destination: str
    region: str


@dataclass(frozen=True, kw_only=True)
class TransferBasis:
    """An admin's recorded legal basis for sending data to `region` (only under `destination`, when set)."""

    id: int
    region: str
    basis: str
    destination: str | None
    created_at: str
    created_by: str
    revoked_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Destination:
    """Where one export goes, the region it lies in and, when outside the residency, the basis that allows it."""

    purpose: str
    target: str
    region: str
    residency: str | None
    basis: TransferBasis | None

    def audit(self) -> dict[str, Any]:
        """The fields every export's audit entry carries."""
        basis = None if self.basis is None else {"id": self.basis.id, "basis": self.basis.basis}
        return {"destination": self.target, "region": self.region, "residency": self.residency, "transfer_basis": basis}


def _host(url: str) -> str:
    host = urlsplit(url).hostname
    if not host:
        raise UsageError(f"destination URL {url!r} has no host")
    return host.lower()


class Residency:
    """The box's residency, declared regions and transfer bases in meta.db; the one check every destination passes."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    # the box's country --------------------------------------------------------
    def country(self) -> str | None:
        value = self.db.scalar("SELECT country FROM residency WHERE id = 1")
        return None if value is None else str(value)

    def set_country(self, actor: str, country: str) -> str:
        """Record (or change) the box's residency; audited (`privacy.residency`)."""
        code = country_code(country)
        with self.db.atomic():
            before = self.country()
            self.db.execute(
                "INSERT INTO residency (id, country, set_at, set_by) VALUES (1, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET country = excluded.country, set_at = excluded.set_at, set_by = excluded.set_by",
                (code, clock.iso(), actor),
            )
            self.audit.record(actor, "privacy.residency", code, {"before": before})
        return code

    # declared regions -----------------------------------------------------------
    def declare(self, actor: str, destination: str, region: str) -> Region:
        """Declare that a path prefix (starts with `/`) or a webhook host lies in `region`; audited (`privacy.region`)."""
        code = country_code(region, "region")
        kind = "path" if destination.startswith(("/", "~")) else "host"
        where = str(Path(destination).expanduser().resolve()) if kind == "path" else destination.strip().lower()
        if kind == "host" and not re.fullmatch(r"[a-z0-9.-]+|\[[0-9a-f:]+\]", where):
            raise UsageError(
                f"{destination!r} is neither an absolute path prefix nor a host name",
                hint="write /mnt/bucket for a path or hooks.example.com for a webhook host (no scheme, port or path)",
            )
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO regions (kind, destination, region, created_at, created_by) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(kind, destination) DO UPDATE SET region = excluded.region",
                (kind, where, code, clock.iso(), actor),
            )
            self.audit.record(actor, "privacy.region", where, {"kind": kind, "region": code})
        return Region(kind, where, code)

    def undeclare(self, actor: str, destination: str) -> None:
        """Forget a declared path prefix or host; audited (`privacy.region.remove`)."""
        candidates = (str(Path(destination).expanduser().resolve()), destination.strip().lower())
        with self.db.atomic():
            row = self.db.one(
                "SELECT kind, destination FROM regions WHERE destination IN (?, ?) ORDER BY kind LIMIT 1", candidates
            )
            if row is None:
                raise NotFound(f"no region is declared for {destination!r}", hint="`mlbox privacy region list` shows them")
            self.db.execute("DELETE FROM regions WHERE kind = ? AND destination = ?", (row["kind"], row["destination"]))
            self.audit.record(actor, "privacy.region.remove", row["destination"], {"kind": row["kind"]})

    def regions(self) -> list[Region]:
        rows = self.db.query("SELECT kind, destination, region FROM regions ORDER BY kind, destination")
        return [Region(r["kind"], r["destination"], r["region"]) for r in rows]

    # transfer bases -------------------------------------------------------------
    def add_transfer(self, actor: str, region: str, basis: str, destination: str | None = None) -> TransferBasis:
        """Record a basis for transfers to `region` (only under `destination` when given); audited."""
        code = region.strip().lower() if region.strip().lower() == UNKNOWN else country_code(region, "region")
        if not basis.strip():
            raise UsageError("a transfer basis needs its legal basis", hint='e.g. --basis "adequacy decision"')
        if destination is not None and destination.startswith(("/", "~")):
            destination = str(Path(destination).expanduser().resolve())
        with self.db.atomic():
            cur = self.db.execute(
                "INSERT INTO transfer_bases (region, basis, destination, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
                (code, basis.strip(), destination, clock.iso(), actor),
            )
            new_id = int(cur.lastrowid or 0)
            self.audit.record(actor, "privacy.transfer.add", f"transfer:{new_id}",
                              {"region": code, "basis": basis.strip(), "destination": destination})  # fmt: skip
        return self._transfer(new_id)

    def revoke_transfer(self, actor: str, basis_id: int) -> TransferBasis:
        """Revoke a transfer basis: destinations it allowed are refused from now on; audited."""
        with self.db.atomic():
            found = self._transfer(basis_id)
            if found.revoked_at is not None:
                raise UsageError(f"transfer basis {basis_id} is already revoked")
            self.db.execute("UPDATE transfer_bases SET revoked_at = ?, revoked_by = ? WHERE id = ?", (clock.iso(), actor, basis_id))
            self.audit.record(actor, "privacy.transfer.revoke", f"transfer:{basis_id}", {"region": found.region})
        return self._transfer(basis_id)

    def transfers(self, *, include_revoked: bool = False) -> list[TransferBasis]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        return [self._row(r) for r in self.db.query(f"SELECT * FROM transfer_bases {where} ORDER BY id")]

    def _transfer(self, basis_id: int) -> TransferBasis:
        row = self.db.one("SELECT * FROM transfer_bases WHERE id = ?", (basis_id,))
        if row is None:
            raise NotFound(f"no transfer basis {basis_id}", hint="`mlbox privacy transfer list` shows them")
        return self._row(row)

    @staticmethod
    def _row(r: dict[str, Any]) -> TransferBasis:
        return TransferBasis(
            id=r["id"], region=r["region"], basis=r["basis"], destination=r["destination"],
            created_at=r["created_at"], created_by=r["created_by"], revoked_at=r["revoked_at"],
        )  # fmt: skip

    # locating and checking destinations -----------------------------------------------
    def locate_path(self, path: Path) -> str:
        """The region a local path lies in: the longest declared prefix it falls under, else the box's residency."""
        resolved = path.expanduser().resolve()
        best: Region | None = None
        for r in self.regions():
            prefix = Path(r.destination)
            if r.kind == "path" and (resolved == prefix or prefix in resolved.parents):
                if best is None or len(r.destination) > len(best.destination):
                    best = r
        return best.region if best is not None else (self.country() or UNKNOWN)

    def locate_host(self, host: str) -> str:
        """The region of a webhook host: declared, this machine's for loopback, else unknown."""
        host = host.lower()
        for r in self.regions():
            if r.kind == "host" and r.destination == host:
                return r.region
        return (self.country() or UNKNOWN) if host in LOOPBACK_HOSTS else UNKNOWN

    def check_path(self, path: Path, purpose: str) -> Destination:
        """Locate a local destination for `purpose` (e.g. "backup") and refuse it outside the residency without a basis."""
        target = str(path.expanduser().resolve())
        return self._decide(purpose, target, self.locate_path(path))

    def check_url(self, url: str, purpose: str) -> Destination:
        """Locate a webhook URL's host and refuse it outside the residency (or unknown) without a basis."""
        return self._decide(purpose, url, self.locate_host(_host(url)), shown=_host(url))

    def webhook_gate(self, purpose: str = "monitoring alert webhook") -> Callable[[str], dict[str, Any]]:
        """The check `monitor.alerts.alert(gate=...)` calls before each POST: raises to refuse, else the audit fields."""
        return lambda url: self.check_url(url, purpose).audit()

    def _decide(self, purpose: str, target: str, region: str, shown: str | None = None) -> Destination:
        home = self.country()
        if home is None or region == home:
            return Destination(purpose=purpose, target=target, region=region, residency=home, basis=None)
        basis = self._basis_for(region, target)
        if basis is None:
            where = f"in region {region}" if region != UNKNOWN else "in an unknown region"
            hint = (
                f"record a transfer basis: `mlbox privacy transfer add --to {region} --basis \"...\"`"
                if region != UNKNOWN
                else DECLARE_HINT
            )
            raise PermissionDenied(
                f"refusing {purpose} to {shown or target}: it is {where}, outside this box's residency {home}, "
                "and no transfer basis is recorded for it",
                hint=hint,
            )
        return Destination(purpose=purpose, target=target, region=region, residency=home, basis=basis)

    def _basis_for(self, region: str, target: str) -> TransferBasis | None:
        """The most specific live basis for `region` that covers `target` (a destination-limited one first)."""
        fitting = [
            b for b in self.transfers()
            if b.region == region and (b.destination is None or target == b.destination or target.startswith(b.destination.rstrip("/") + "/"))
        ]  # fmt: skip
        fitting.sort(key=lambda b: (b.destination is None, -(len(b.destination or ""))))
        return fitting[0] if fitting else None
