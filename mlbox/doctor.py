"""`mlbox doctor`: checks of the installation, the hardware and the box, each ok / warn / fail.

It also finds what crashed writers leave behind (`find_leftovers`): runs still `running`
whose process died, artifact files no run or model version names, temporary files of dead
processes and leftover online-store tables. They are warnings; `repair` (`mlbox doctor
--repair`) marks the runs `killed`, deletes the files, drops the tables and audits it.

`check_artifacts` verifies every artifact the catalog names (sha256 and HMAC, see
store/artifacts.py) and fails on any that a load would refuse. Artifacts written before
artifacts were signed have no HMAC: `repair` records one, but only for a file whose sha256
still matches its catalog row (a file that fails its sha256 is never signed). In an encrypted
box the check decrypts each artifact in memory (HMAC of the stored bytes, then the plaintext's
sha256), and `check_artifact_encryption` fails on any artifact stored as plaintext.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from mlbox import hardware
from mlbox.config import Settings
from mlbox.features import online
from mlbox.registry.store import Registry
from mlbox.store.artifacts import ArtifactStore, StoredFile
from mlbox.store.audit import AuditLog
from mlbox.store.layout import BoxPaths
from mlbox.store.migrations import MIGRATIONS, applied
from mlbox.store.sqlite import Database
from mlbox.tracking.store import RunInfo, TrackingStore

Status = Literal["ok", "warn", "fail"]
# (distribution names to try, required?)
PACKAGES: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("duckdb",), True),
    (("sqlite-utils",), True),
    (("pyarrow",), True),
    (("scikit-learn",), True),
    (("xgboost", "xgboost-cpu"), True),
    (("onnxruntime", "onnxruntime-gpu"), True),
    (("torch",), True),
    (("bentoml",), True),
    (("textual",), True),
    (("typer",), True),
)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_python() -> Check:
    ok = sys.version_info >= (3, 11)
    return Check("python", "ok" if ok else "fail", f"{platform.python_version()} ({sys.executable})")


def check_packages() -> list[Check]:
    out = []
    for names, required in PACKAGES:
        found = _version(names)
        if found is None:
            out.append(Check(f"package {names[0]}", "fail" if required else "warn", "not installed"))
        else:
            out.append(Check(f"package {names[0]}", "ok", f"{found[0]} {found[1]}"))
    return out


def check_compute(inventory: hardware.Inventory) -> list[Check]:
    torch = _version(("torch",))
    xgb = _version(("xgboost", "xgboost-cpu"))
    torch_cuda = bool(torch) and "+cpu" not in torch[1]  # type: ignore[index]
    if not inventory.gpus:
        checks = [Check("gpu", "ok", f"none — CPU mode. {inventory.reason}")]
        if torch_cuda:
            checks.append(Check("torch build", "warn", f"torch {torch[1]} is a CUDA build on a machine without a GPU (large, unused)"))  # type: ignore[index]
        return checks
    names = ", ".join(f"{g.index}: {g.name} {g.memory_total_mb // 1024} GiB" for g in inventory.gpus)
    checks = [Check("gpu", "ok", f"{len(inventory.gpus)} NVIDIA GPU(s) — CUDA mode. {names}")]
    if torch and not torch_cuda:
        checks.append(Check("torch build", "warn", f"torch {torch[1]} is a CPU build; reinstall with ./install.sh to use the GPU"))
    if xgb and xgb[0] == "xgboost-cpu":
        checks.append(Check("xgboost build", "warn", "xgboost-cpu cannot train on the GPU; reinstall with ./install.sh"))
    return checks


def check_onnx(inventory: hardware.Inventory) -> Check:
    """Which onnxruntime build is installed, its execution providers, and the one served models run on."""
    try:
        info = hardware.onnx_providers()
    except ImportError as exc:
        return Check("onnx providers", "fail", f"onnxruntime cannot be imported: {exc}")
    detail = f"{info['package']}: models run on {info['default']} (available: {', '.join(info['available'])})"
    if inventory.gpus and info["default"] != "CUDAExecutionProvider":
        return Check("onnx providers", "warn", f"{detail}; a GPU is here: ./install.sh installs onnxruntime-gpu")
    return Check("onnx providers", "ok", detail)


def check_disk(settings: Settings) -> Check:
    path = settings.home if settings.home.exists() else settings.home.parent
    while not path.exists():
        path = path.parent
    free_gb = shutil.disk_usage(path).free / 1024**3
    floor = float(settings["doctor.min_free_disk_gb"])
    status: Status = "ok" if free_gb >= floor else "warn"
    return Check("disk", status, f"{free_gb:.1f} GiB free at {path} (warn below {floor:g} GiB)")


def check_box(paths: BoxPaths, db: Database | None, audit: AuditLog | None) -> list[Check]:
    if db is None or audit is None:
        return [Check("box", "fail", f"no box at {paths.home}; create one with `mlbox init`")]
    checks = [Check("box", "ok", str(paths.home))]
    done = applied(db)
    checks.append(Check("schema", "ok", f"{len(done)}/{len(MIGRATIONS)} migrations applied, latest {done[-1]}"))
    problems = db.integrity()
    checks.append(
        Check("metadata integrity", "fail" if problems else "ok", problems[0] if problems else "integrity and foreign keys ok")
    )
    result = audit.verify()
    checks.append(
        Check("audit chain", "ok" if result.ok else "fail", f"{result.checked} entries verified" if result.ok else result.problem)
    )
    mode = paths.keys.stat().st_mode & 0o777 if paths.keys.exists() else 0
    loose = [p.name for p in paths.keys.glob("*") if p.stat().st_mode & 0o077] if paths.keys.exists() else []
    if mode & 0o077 or loose:
        checks.append(Check("key permissions", "warn", f"keys/ or {', '.join(loose) or 'the folder'} readable by others; chmod 700/600"))
    else:
        checks.append(Check("key permissions", "ok", "keys/ is private to its owner"))
    return checks


@dataclass(frozen=True, kw_only=True)
class Leftovers:
    """What killed writers left in a box: stale runs, unreferenced artifacts, temporary files, online tables."""

    stale_runs: list[RunInfo] = field(default_factory=list)
    untracked_runs: list[RunInfo] = field(default_factory=list)  # running, recorded without a process: cannot tell
    unreferenced: list[StoredFile] = field(default_factory=list)
    temporary: list[Path] = field(default_factory=list)
    online_tables: list[str] = field(default_factory=list)
    grace_s: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.stale_runs or self.unreferenced or self.temporary or self.online_tables)


@dataclass(frozen=True, kw_only=True)
class Repair:
    """What `repair` did."""

    killed_runs: list[str]
    removed_artifacts: int
    removed_bytes: int
    removed_temporary: int
    dropped_tables: list[str]
    signed_artifacts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stores(paths: BoxPaths, db: Database, audit: AuditLog) -> tuple[ArtifactStore, TrackingStore, Registry]:
    """The stores the leftovers live in, opened without their own sweeps (doctor reports before it repairs)."""
    artifacts = ArtifactStore(paths.artifacts, sweep=False)
    return artifacts, TrackingStore(db, artifacts, reap=False), Registry(db, artifacts, audit)


def _online_tables(paths: BoxPaths, settings: Settings, action: Callable[[Database], list[str]]) -> list[str]:
    """`action` (list or sweep leftover tables) on online.db; [] when there is none (never created just to look)."""
    if not paths.online_db.is_file():
        return []
    db = Database(paths.online_db, busy_timeout_ms=settings["store.busy_timeout_ms"], synchronous=settings["store.synchronous"])
    try:
        return action(db)
    finally:
        db.close()


def find_leftovers(settings: Settings, paths: BoxPaths, db: Database, audit: AuditLog) -> Leftovers:
    """Everything `repair` would fix, found without changing anything."""
    artifacts, tracking, registry = _stores(paths, db, audit)
    grace = float(settings["doctor.artifact_grace_s"])
    with db.snapshot():  # one consistent view of what the catalog names
        referenced = tracking.artifact_hashes() | registry.artifact_hashes()
        unreferenced = artifacts.unreferenced(referenced, grace)
    tables = _online_tables(paths, settings, online.leftover_tables)
    return Leftovers(
        stale_runs=tracking.stale_runs(),
        untracked_runs=tracking.untracked_runs(),
        unreferenced=unreferenced,
        temporary=artifacts.temporary(),
        online_tables=tables,
        grace_s=grace,
    )


def check_leftovers(found: Leftovers) -> list[Check]:
    """The report lines for `found`; every problem is a warning that `mlbox doctor --repair` fixes."""
    fix = "; `mlbox doctor --repair` fixes it"
    runs = [f"{r.id} (pid {r.pid} on {r.host}, started {r.started_at[:19]})" for r in found.stale_runs]
    checks = [
        Check("stale runs", "warn", f"{len(runs)} run(s) `running` whose process died: {', '.join(runs)}{fix}")
        if runs
        else Check("stale runs", "ok", "no run is left `running` by a dead process")
    ]
    if found.untracked_runs:
        ids = ", ".join(r.id for r in found.untracked_runs)
        why = "`running` without a recorded process (older mlbox): cannot tell if alive"
        checks.append(Check("untracked runs", "warn", f"{ids} {why}"))
    size = sum(f.size for f in found.unreferenced)
    count = len(found.unreferenced)
    checks.append(
        Check("unreferenced artifacts", "warn", f"{count} file(s), {size / 1e6:.1f} MB, named by no run or model version{fix}")
        if found.unreferenced
        else Check("unreferenced artifacts", "ok", f"every artifact older than {found.grace_s:g} s is named by a run or model version")
    )
    names = ", ".join(p.name for p in found.temporary)
    checks.append(
        Check("temporary files", "warn", f"{len(found.temporary)} left by dead processes: {names}{fix}")
        if found.temporary
        else Check("temporary files", "ok", "none left by dead processes")
    )
    checks.append(
        Check("online tables", "warn", f"leftover staging/rebuild tables {', '.join(found.online_tables)}{fix}")
        if found.online_tables
        else Check("online tables", "ok", "no leftover staging or rebuild tables")
    )
    return checks


def check_artifacts(paths: BoxPaths, db: Database, audit: AuditLog) -> Check:
    """Verify the sha256 and HMAC of every artifact a run, model version or profile names."""
    artifacts, tracking, registry = _stores(paths, db, audit)
    with db.snapshot():
        names = registry.artifact_names()
        for sha256 in tracking.artifact_hashes():
            names.setdefault(sha256, []).append("a run artifact")
    bad = [(sha, problem) for sha in sorted(names) if (problem := artifacts.problem(sha))]
    if not bad:
        return Check("artifact integrity", "ok", f"{len(names)} artifact(s): sha256 and HMAC verified")
    unsigned = [sha for sha, problem in bad if problem.kind == "unsigned"]
    shown = "; ".join(f"{names[sha][0]} ({sha[:12]}) {problem.text}" for sha, problem in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    fix = f"; `mlbox doctor --repair` signs the {len(unsigned)} unsigned one(s) whose sha256 verifies" if unsigned else ""
    return Check("artifact integrity", "fail", f"{len(bad)} of {len(names)} artifact(s) would be refused: {shown}{more}{fix}")


def check_artifact_encryption(paths: BoxPaths) -> Check | None:
    """In an encrypted box, every stored artifact must be encrypted (None: a plain box, nothing to check)."""
    artifacts = ArtifactStore(paths.artifacts, sweep=False)
    if not artifacts.encrypted:
        return None
    plain = artifacts.unencrypted()
    total = sum(1 for _ in artifacts.stored())
    if not plain:
        return Check("artifact encryption", "ok", f"{total} artifact(s), all encrypted (AES-256-GCM)")
    shown = ", ".join(sha[:12] for sha in plain[:5]) + (f" (and {len(plain) - 5} more)" if len(plain) > 5 else "")
    return Check(
        "artifact encryption", "fail",
        f"{len(plain)} of {total} artifact(s) stored as plaintext in an encrypted box: {shown}; "
        "`mlbox keys encrypt-box` encrypts them",
    )  # fmt: skip


def repair(settings: Settings, paths: BoxPaths, db: Database, audit: AuditLog, actor: str) -> Repair:
    """Fix every leftover: mark stale runs killed, delete unreferenced and temporary files, drop leftover tables."""
    artifacts, tracking, registry = _stores(paths, db, audit)
    killed = tracking.reap()
    with db.atomic():  # the write lock: no row naming a new artifact commits while files are removed
        referenced = tracking.artifact_hashes() | registry.artifact_hashes()
        removed = artifacts.remove_unreferenced(referenced, float(settings["doctor.artifact_grace_s"]))
    temporary = artifacts.sweep_temporary()
    signed = artifacts.sign_unsigned(referenced)
    dropped = _online_tables(paths, settings, online.sweep)
    result = Repair(
        killed_runs=killed,
        removed_artifacts=len(removed),
        removed_bytes=sum(f.size for f in removed),
        removed_temporary=len(temporary),
        dropped_tables=dropped,
        signed_artifacts=len(signed),
    )
    audit.record(actor, "box.repair", str(paths.home), result.as_dict())
    return result


def run_checks(
    settings: Settings, paths: BoxPaths, db: Database | None, audit: AuditLog | None, inventory: hardware.Inventory | None = None
) -> list[Check]:
    """Every check, in display order."""
    checks = [check_python(), *check_packages()]
    inventory = inventory or hardware.detect()
    checks += check_compute(inventory)
    checks.append(check_onnx(inventory))
    checks.append(check_disk(settings))
    checks.append(Check("settings", "ok", str(settings.source) if settings.source else "defaults (no mlbox.toml)"))
    checks += check_box(paths, db, audit)
    if db is not None and audit is not None:
        checks += check_leftovers(find_leftovers(settings, paths, db, audit))
        checks.append(check_artifacts(paths, db, audit))
        if (encryption := check_artifact_encryption(paths)) is not None:
            checks.append(encryption)
    checks.append(Check("cpu", "ok", f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}"))
    return checks
