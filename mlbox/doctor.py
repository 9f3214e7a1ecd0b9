"""`mlbox doctor`: checks of the installation, the hardware and the box, each ok / warn / fail."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any, Literal

from mlbox import hardware
from mlbox.config import Settings
from mlbox.store.audit import AuditLog
from mlbox.store.layout import BoxPaths
from mlbox.store.migrations import MIGRATIONS, applied
from mlbox.store.sqlite import Database

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


def run_checks(
    settings: Settings, paths: BoxPaths, db: Database | None, audit: AuditLog | None, inventory: hardware.Inventory | None = None
) -> list[Check]:
    """Every check, in display order."""
    checks = [check_python(), *check_packages()]
    checks += check_compute(inventory or hardware.detect())
    checks.append(check_disk(settings))
    checks.append(Check("settings", "ok", str(settings.source) if settings.source else "defaults (no mlbox.toml)"))
    checks += check_box(paths, db, audit)
    checks.append(Check("cpu", "ok", f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}"))
    return checks
