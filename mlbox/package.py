"""`mlbox package NAME`: a Bento holding one deployment — its model versions and the routing service.

The Bento carries a minimal box: the deployment row, its model versions (artifacts checked
against their sha256), their runs, and **its own credentials only**: a service user
`bento_<deployment>` made in the box at package time, with one fresh token whose hash is the only
one the Bento holds (the box's users and tokens never leave it). The token is shown once; it is
listed and revoked like any other (`mlbox auth token list/revoke` in the box records it; a running
Bento applies a revocation made in its own bundled box, `mlbox --home <bento>/src/box auth token
revoke ID`, within a second, and a rebuilt Bento never holds a revoked token). It also carries the mlbox package itself, so plain `bentoml serve` runs it anywhere
BentoML runs; the build is offline (`lock_packages: false`). Entity lookups need the box's
online store and are not packaged: a packaged service answers `rows` requests.

A Bento is an export: from an encrypted box its meta.db subset is read through the box's own
(SQLCipher) connection and its artifacts are decrypted (after their HMAC and sha256 verify)
into the Bento's plain bundled box, which `bentoml serve` opens anywhere without the box's keys.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mlbox.box import Box
from mlbox.config import child_env, load_settings
from mlbox.errors import MlboxError, StoreError
from mlbox.security.residency import Residency
from mlbox.store.artifacts import ArtifactStore

SERVING_PACKAGES = (
    "onnxruntime", "numpy", "pandas", "pyarrow", "duckdb", "starlette", "uvloop", "httptools", "orjson",
    "sqlite-utils", "pyyaml", "typer", "rich", "prometheus-client", "psutil",
)  # fmt: skip

# The service opens the box bundled next to the mlbox package (src/box); nothing here touches os.environ.
SERVICE = '''"""Entry point of an mlbox Bento: serve the box bundled in src/box."""
from mlbox.api.service import MlboxService  # noqa: F401
'''


@dataclass(frozen=True)
class PackageResult:
    """A built Bento: its tag, models and path, and the service credentials made for it (the token shown once)."""

    tag: str
    models: list[str]
    path: str
    user: str
    token_id: str
    token: str


def _pinned(name: str) -> str:
    if name == "onnxruntime" and _installed("onnxruntime-gpu"):
        name = "onnxruntime-gpu"  # a GPU box's Bento carries the CUDA build it was tested with, never both
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def service_credentials(box: Box, deployment: str, actor: str, ttl_days: int | None) -> tuple[str, str, str]:
    """(user, token id, token) for a Bento of `deployment`: its own service user, a fresh `predict` token
    scoped to that one deployment."""
    user = f"bento_{deployment}"[:64]
    if user not in {u.name for u in box.identity.users()}:
        box.identity.add_user(actor, user, "service")
    info, token = box.identity.create_token(
        actor, user, "service", expires_in_s=None if ttl_days is None else ttl_days * 86400, never_expires=ttl_days is None,
        description=f"packaged service for deployment {deployment}", deployments=[deployment],
    )  # fmt: skip
    return user, info.id, token


def build_package(box: Box, name: str, actor: str, *, token_ttl_days: int | None = None) -> PackageResult:
    deployment = box.deployments.get(name)
    refs = sorted({r for r in (deployment.primary_model, deployment.canary_model, deployment.shadow_model) if r})
    versions = [box.registry.get(r) for r in refs]
    # the Bento is written to the box's bentoml/ store: checked like any destination (it may be a mounted bucket)
    where = Residency(box.db, box.audit).check_path(box.paths.bentoml, "package")
    user, token_id, token = service_credentials(box, name, actor, token_ttl_days)
    with tempfile.TemporaryDirectory(prefix="mlbox-package-") as tmp:
        ctx = Path(tmp)
        home = ctx / "box"
        Box.create(load_settings(home, environ={}), "package").close()
        dst = sqlite3.connect(home / "meta.db")
        # the box's own connection (SQLCipher with the keyring's key in an encrypted box), one read snapshot
        try:
            with box.db.snapshot() as db:
                src = db.conn
                pairs = [(v.name, v.version) for v in versions]
                runs = [v.run_id for v in versions if v.run_id]
                # the Bento's own service user and its one token: never the box's users or token hashes
                _copy(src, dst, "users", "name = ?", (user,))
                _copy(src, dst, "tokens", "id = ?", (token_id,))
                _copy(src, dst, "token_scopes", "token_id = ?", (token_id,))
                exp_ids = {r[0] for r in src.execute(f"SELECT experiment_id FROM runs WHERE id IN ({_marks(runs)})", runs)}
                _copy(src, dst, "experiments", f"id IN ({_marks(exp_ids)})", tuple(exp_ids))
                _copy(src, dst, "runs", f"id IN ({_marks(runs)})", tuple(runs))
                _copy(src, dst, "models", f"name IN ({_marks(pairs)})", tuple(n for n, _ in pairs))
                for model_name, number in pairs:
                    _copy(src, dst, "model_versions", "name = ? AND version = ?", (model_name, number))
                _copy(src, dst, "deployments", "name = ?", (name,))
                dst.commit()
        finally:
            dst.close()
        # verified (sha256 + HMAC) here, then stored and signed under the bundled box's own artifact key:
        # this box's key never leaves it, and the Bento checks its copies before loading them
        bundled = ArtifactStore(home / "artifacts")
        for v in versions:
            for fname, meta in v.artifacts.items():
                bundled.put_bytes(box.artifacts.read_verified(meta["sha256"], f"model {v.ref} file {fname}"))
        package_dir = Path(__file__).resolve().parent
        shutil.copytree(package_dir, ctx / "mlbox", ignore=shutil.ignore_patterns("__pycache__", "_templates"))
        (ctx / "service.py").write_text(SERVICE)
        bento_name = f"mlbox-{name.replace('_', '-')}"
        packages = "\n".join(f"    - {_pinned(p)}" for p in SERVING_PACKAGES)
        (ctx / "bentofile.yaml").write_text(
            f'service: "service:MlboxService"\nname: {bento_name}\n'
            f"labels:\n  deployment: {name}\n  models: {'_'.join(r.replace(':', '-v') for r in refs)}\n"
            'include:\n  - "service.py"\n  - "mlbox/**"\n  - "box/**"\n'
            f"python:\n  lock_packages: false\n  packages:\n{packages}\n"
            'envs:\n  - name: BENTOML_DO_NOT_TRACK\n    value: "True"\n'
        )
        env = child_env(drop=("MLBOX_TOKEN",), BENTOML_HOME=str(box.paths.bentoml), BENTOML_DO_NOT_TRACK="True",
                        MLBOX_HOME=str(home))  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", str(ctx), "--output", "tag"],
            cwd=ctx, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if proc.returncode != 0:
            raise MlboxError(f"bentoml build failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        tag = next((line.split("__tag__:", 1)[1].strip() for line in proc.stdout.splitlines() if "__tag__:" in line), "")
        if not tag:
            raise StoreError(f"bentoml build printed no tag: {proc.stdout.strip()[-200:]}")
    box.audit.record(actor, "deploy.package", name, {"bento": tag, "models": refs, "user": user, "token": token_id,
                                                      **where.audit()})  # fmt: skip
    return PackageResult(tag, refs, str(box.paths.bentoml / "bentos" / tag.replace(":", "/")), user, token_id, token)


def _marks(values: object) -> str:
    return ",".join("?" * len(values)) or "NULL"  # type: ignore[arg-type]


def _copy(src: sqlite3.Connection, dst: sqlite3.Connection, table: str, where: str, params: tuple[object, ...]) -> None:
    cur = src.execute(f"SELECT * FROM {table} WHERE {where}", params)
    cols = [d[0] for d in cur.description]
    rows = [tuple(r) for r in cur.fetchall()]  # the box's rows are sqlite3/sqlcipher3 Row objects
    dst.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
