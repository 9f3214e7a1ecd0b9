"""The model registry over meta.db: versions with artifacts, signature and lineage; aliases; archive.

A version is registered in one transaction after its files are in the content-addressed
artifact store, so a crash never leaves a half-registered version. Every change (register,
profile, promote, archive) and every export is audited. Alias moves are
compare-and-set on the alias row: two promotions that both saw the same holder cannot
both win; the second gets a Conflict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlbox import clock
from mlbox.errors import Conflict, NotFound, UsageError
from mlbox.store.artifacts import ArtifactStore
from mlbox.store.audit import AuditLog
from mlbox.store.sqlite import Database
from mlbox.types import check_name

MODEL_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
ALIASES = ("staging", "production")
UNSET: Any = object()


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version as stored: flavor, signature, metrics, artifacts, lineage and aliases."""
    name: str
    version: int
    run_id: str | None
    flavor: str
    task: str
    signature: dict[str, Any]
    reference_stats: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: dict[str, dict[str, Any]]  # file name -> {sha256, size}
    lineage: dict[str, Any]
    onnx_max_abs_diff: float | None
    onnx_tolerance: float | None
    created_at: str
    created_by: str
    archived_at: str | None
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.ref,
            "flavor": self.flavor,
            "task": self.task,
            "aliases": ",".join(self.aliases),
            "archived": bool(self.archived_at),
            "run": self.run_id,
            "onnx_diff": self.onnx_max_abs_diff,
            "created_at": self.created_at,
            "created_by": self.created_by,
            **{k: v for k, v in self.metrics.items() if isinstance(v, (int, float))},
        }


def parse_ref(text: str) -> tuple[str, str]:
    """`NAME:VERSION`, `NAME:staging`, `NAME:production` or `NAME:latest` (also NAME alone = latest)."""
    name, _, which = text.partition(":")
    check_name(name, "model name", MODEL_PATTERN)
    which = which or "latest"
    if not (which.isdigit() or which in (*ALIASES, "latest")):
        raise UsageError(f"invalid model reference {text!r}", hint="write NAME:3, NAME:staging, NAME:production or NAME:latest")
    return name, which


class Registry:
    """The model registry in meta.db: versions, their artifacts and lineage, aliases (compare-and-set), stages."""

    def __init__(self, db: Database, artifacts: ArtifactStore, audit: AuditLog) -> None:
        self.db = db
        self.artifacts = artifacts
        self.audit = audit
        self._profiles: dict[str, dict[str, Any]] = {}

    # registering ------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        files: dict[str, Path],
        flavor: str,
        task: str,
        signature: dict[str, Any],
        reference_stats: dict[str, Any],
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        run_id: str | None,
        onnx_max_abs_diff: float | None,
        onnx_tolerance: float | None,
        actor: str,
        profile: dict[str, Any] | None = None,
    ) -> ModelVersion:
        check_name(name, "model name", MODEL_PATTERN)
        stored = {}
        for fname, path in sorted(files.items()):
            art = self.artifacts.put(path)  # before the transaction: a crash leaves only unreferenced files
            stored[fname] = {"sha256": art.sha256, "size": art.size}
        profiled = self._put_profile(profile) if profile is not None else None
        now = clock.iso()
        with self.db.atomic():
            if not self.db.one("SELECT 1 FROM models WHERE name = ?", (name,)):
                self.db.execute("INSERT INTO models (name, created_at, created_by) VALUES (?, ?, ?)", (name, now, actor))
            version = int(self.db.scalar("SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE name = ?", (name,)))
            self.db.execute(
                "INSERT INTO model_versions (name, version, run_id, flavor, task, signature, reference_stats, metrics, "
                "artifacts, lineage, onnx_max_abs_diff, onnx_tolerance, created_at, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    run_id,
                    flavor,
                    task,
                    json.dumps(signature),
                    json.dumps(reference_stats),
                    json.dumps(metrics, default=str),
                    json.dumps(stored),
                    json.dumps(lineage, default=str),
                    onnx_max_abs_diff,
                    onnx_tolerance,
                    now,
                    actor,
                ),
            )
            if profiled is not None and profile is not None:
                self._profile_row(name, version, profile, profiled, actor)
            self.audit.record(actor, "models.register", f"{name}:{version}", {"run": run_id, "flavor": flavor})
        return self.get(f"{name}:{version}")

    # reference profiles (monitoring's baseline) -----------------------------------
    def _put_profile(self, profile: dict[str, Any]) -> str:
        data = json.dumps(profile, separators=(",", ":"), allow_nan=False).encode()
        return self.artifacts.put_bytes(data).sha256  # from memory: never a plaintext file in an encrypted box

    def _profile_row(self, name: str, version: int, profile: dict[str, Any], sha256: str, actor: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO model_profiles (name, version, format, sha256, rows, created_at, created_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, version, str(profile.get("format", "")), sha256, int(profile.get("rows", 0)), clock.iso(), actor),
        )

    def save_profile(self, ref: str, profile: dict[str, Any], actor: str) -> None:
        """Store (or replace) the reference profile of the version `ref`; audited."""
        version = self.get(ref)
        sha256 = self._put_profile(profile)
        with self.db.atomic():
            self._profile_row(version.name, version.version, profile, sha256, actor)
            self.audit.record(actor, "models.profile", version.ref, {"format": profile.get("format"), "rows": profile.get("rows")})

    def profile(self, ref: str) -> dict[str, Any] | None:
        """The stored reference profile of `ref` (None: it has none), read from its verified artifact."""
        version = self.get(ref)
        row = self.db.one("SELECT sha256 FROM model_profiles WHERE name = ? AND version = ?", (version.name, version.version))
        if row is None:
            return None
        cached = self._profiles.get(row["sha256"])
        if cached is None:
            data = self.artifacts.read_verified(row["sha256"], f"reference profile of model {version.ref}")
            cached = json.loads(data)
            self._profiles = {row["sha256"]: cached}  # one kept: a check reads one or two versions at a time
        return cached

    # reading ----------------------------------------------------------------
    def artifact_hashes(self) -> set[str]:
        """The sha256 of every artifact a model version names (archived ones included), profiles too."""
        rows = self.db.query(
            "SELECT DISTINCT json_extract(a.value, '$.sha256') AS sha256 FROM model_versions v, json_each(v.artifacts) a "
            "UNION SELECT sha256 FROM model_profiles"
        )
        return {r["sha256"] for r in rows if r["sha256"]}

    def artifact_names(self) -> dict[str, list[str]]:
        """Each artifact a model version or profile names -> what names it ("model churn:3 file model.onnx")."""
        out: dict[str, list[str]] = {}
        rows = self.db.query(
            "SELECT v.name, v.version, a.key AS file, json_extract(a.value, '$.sha256') AS sha256 "
            "FROM model_versions v, json_each(v.artifacts) a "
            "UNION ALL SELECT name, version, 'reference profile', sha256 FROM model_profiles ORDER BY 1, 2, 3"
        )
        for r in rows:
            if r["sha256"]:
                out.setdefault(r["sha256"], []).append(f"model {r['name']}:{r['version']} file {r['file']}")
        return out

    def _aliases(self, name: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for r in self.db.query("SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias", (name,)):
            out.setdefault(r["version"], []).append(r["alias"])
        return out

    def _version(self, row: dict[str, Any], aliases: dict[int, list[str]]) -> ModelVersion:
        return ModelVersion(
            name=row["name"],
            version=row["version"],
            run_id=row["run_id"],
            flavor=row["flavor"],
            task=row["task"],
            signature=json.loads(row["signature"]),
            reference_stats=json.loads(row["reference_stats"]),
            metrics=json.loads(row["metrics"]),
            artifacts=json.loads(row["artifacts"]),
            lineage=json.loads(row["lineage"]),
            onnx_max_abs_diff=row["onnx_max_abs_diff"],
            onnx_tolerance=row["onnx_tolerance"],
            created_at=row["created_at"],
            created_by=row["created_by"],
            archived_at=row["archived_at"],
            aliases=aliases.get(row["version"], []),
        )

    def get(self, ref: str) -> ModelVersion:
        name, which = parse_ref(ref)
        if which in ALIASES:
            holder = self.db.one("SELECT version FROM model_aliases WHERE name = ? AND alias = ?", (name, which))
            if holder is None:
                raise NotFound(f"no version of {name!r} is {which}")
            number = int(holder["version"])
        elif which == "latest":
            number = int(self.db.scalar("SELECT coalesce(max(version), 0) FROM model_versions WHERE name = ?", (name,)))
        else:
            number = int(which)
        row = self.db.one("SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, number))
        if row is None:
            raise NotFound(f"no model version {name}:{which}", hint="`mlbox models list` shows the registry")
        return self._version(row, self._aliases(name))

    def versions(self, name: str | None = None, include_archived: bool = True) -> list[ModelVersion]:
        sql = "SELECT * FROM model_versions" + (" WHERE name = ?" if name else "") + " ORDER BY name, version"
        rows = self.db.query(sql, (name,) if name else ())
        aliases = {n: self._aliases(n) for n in {r["name"] for r in rows}}
        out = [self._version(r, aliases[r["name"]]) for r in rows]
        return [v for v in out if include_archived or not v.archived_at]

    def holder(self, name: str, alias: str) -> int | None:
        row = self.db.one("SELECT version FROM model_aliases WHERE name = ? AND alias = ?", (name, alias))
        return None if row is None else int(row["version"])

    # transitions -------------------------------------------------------------
    def set_alias(self, ref: str, alias: str, actor: str, expected: int | None = UNSET) -> ModelVersion:
        """Point `alias` at the version `ref`; with `expected`, only if the alias still holds that version (None = unset)."""
        if alias not in ALIASES:
            raise UsageError(f"unknown alias {alias!r}", hint=f"aliases are {', '.join(ALIASES)}")
        target = self.get(ref)
        if target.archived_at:
            raise Conflict(f"{target.ref} is archived; register a new version or unarchive it first")
        with self.db.atomic():
            row = self.db.one("SELECT version, revision FROM model_aliases WHERE name = ? AND alias = ?", (target.name, alias))
            current = None if row is None else int(row["version"])
            if expected is not UNSET and current != expected:
                raise Conflict(
                    f"{target.name}:{alias} is now {current if current is not None else 'unset'}, not {expected if expected is not None else 'unset'} "
                    "as expected: someone else moved it",
                    hint="check `mlbox models show` and retry",
                )
            now = clock.iso()
            if row is None:
                self.db.execute(
                    "INSERT INTO model_aliases (name, alias, version, revision, updated_at, updated_by) VALUES (?, ?, ?, 1, ?, ?)",
                    (target.name, alias, target.version, now, actor),
                )
            else:
                changed = self.db.execute(
                    "UPDATE model_aliases SET version = ?, revision = revision + 1, updated_at = ?, updated_by = ? "
                    "WHERE name = ? AND alias = ? AND revision = ?",
                    (target.version, now, actor, target.name, alias, row["revision"]),
                ).rowcount
                if changed != 1:
                    raise Conflict(f"{target.name}:{alias} changed during the promotion; retry")
            self.audit.record(actor, "models.promote", target.ref, {"alias": alias, "from": current})
        return self.get(target.ref)

    def archive(self, ref: str, actor: str) -> ModelVersion:
        target = self.get(ref)
        with self.db.atomic():
            dropped = [r["alias"] for r in self.db.query(
                "SELECT alias FROM model_aliases WHERE name = ? AND version = ?", (target.name, target.version)
            )]  # fmt: skip
            self.db.execute("DELETE FROM model_aliases WHERE name = ? AND version = ?", (target.name, target.version))
            self.db.execute(
                "UPDATE model_versions SET archived_at = ? WHERE name = ? AND version = ? AND archived_at IS NULL",
                (clock.iso(), target.name, target.version),
            )
            self.audit.record(actor, "models.archive", target.ref, {"aliases_removed": dropped})
        return self.get(target.ref)

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """Side-by-side differences of two versions: metrics, signature columns, lineage, flavor."""
        va, vb = self.get(a), self.get(b)
        cols_a = {c["name"]: c for c in va.signature["columns"]}
        cols_b = {c["name"]: c for c in vb.signature["columns"]}
        metrics = sorted(set(va.metrics) | set(vb.metrics))
        return {
            "a": va.ref,
            "b": vb.ref,
            "flavor": [va.flavor, vb.flavor],
            "metrics": {m: [va.metrics.get(m), vb.metrics.get(m)] for m in metrics},
            "features_added": sorted(set(cols_b) - set(cols_a)),
            "features_removed": sorted(set(cols_a) - set(cols_b)),
            "features_changed": sorted(n for n in set(cols_a) & set(cols_b) if cols_a[n] != cols_b[n]),
            "dataset": [va.lineage.get("dataset_fingerprint"), vb.lineage.get("dataset_fingerprint")],
            "feature_views": [va.lineage.get("feature_views"), vb.lineage.get("feature_views")],
            "code": [va.lineage.get("code_rev"), vb.lineage.get("code_rev")],
            "params": {
                k: [va.lineage.get("params", {}).get(k), vb.lineage.get("params", {}).get(k)]
                for k in sorted(set(va.lineage.get("params", {})) | set(vb.lineage.get("params", {})))
                if va.lineage.get("params", {}).get(k) != vb.lineage.get("params", {}).get(k)
            },
        }

    def export(
        self, ref: str, fmt: str, dest: Path, *, actor: str = "system", destination: dict[str, Any] | None = None
    ) -> list[Path]:
        """Copy a version's ONNX file or native files (verified: sha256 and HMAC) to `dest`; audited (`models.export`).

        `destination` (the residency check's region and transfer basis) is added to the audit entry.
        """
        version = self.get(ref)
        if fmt not in ("onnx", "native"):
            raise UsageError(f"unknown export format {fmt!r}", hint="use onnx or native")
        wanted = {k: v for k, v in version.artifacts.items() if (k == "model.onnx") == (fmt == "onnx")}
        if not wanted:
            raise NotFound(f"{version.ref} has no {fmt} artifact")
        if fmt == "onnx" and dest.suffix == ".onnx":
            out = [self.artifacts.copy_to(wanted["model.onnx"]["sha256"], dest, f"model {version.ref} file model.onnx")]
        else:
            dest.mkdir(parents=True, exist_ok=True)
            out = [
                self.artifacts.copy_to(meta["sha256"], dest / Path(fname).name, f"model {version.ref} file {fname}")
                for fname, meta in wanted.items()
            ]
        self.audit.record(actor, "models.export", version.ref, {
            "format": fmt, "dest": str(dest), "files": {p.name: wanted[k]["sha256"] for k, p in zip(wanted, out, strict=True)},
            **(destination or {}),
        })  # fmt: skip
        return out

    def native_files(self, ref: str) -> dict[str, bytes]:
        """A version's native files (file name -> content), verified and, in an encrypted box, decrypted in memory.

        What `Flavor.load_bytes` loads: no plaintext copy is written anywhere.
        """
        version = self.get(ref)
        return {
            Path(fname).name: self.artifacts.read_verified(meta["sha256"], f"model {version.ref} file {fname}")
            for fname, meta in version.artifacts.items()
            if fname.startswith("native/")
        }

    def local_files(self, ref: str, directory: Path) -> Path:
        """Materialize a version's native files into `directory` (verified; decrypted: the copies are plaintext)."""
        version = self.get(ref)
        for fname, meta in version.artifacts.items():
            if fname.startswith("native/"):
                self.artifacts.copy_to(meta["sha256"], directory / Path(fname).name, f"model {version.ref} file {fname}")
        return directory
