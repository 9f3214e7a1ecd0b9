"""Fixtures of the serving tests: one trained box per session, real `mlbox serve` processes, in-process clients.

The session template is a `tabular-classification` project (features applied, ingested and
materialized) holding

    churn_fs:1  xgboost from the feature store (the template's train.yaml, 10 trees): entity requests
    churn:1     xgboost on a plain 2,000-row Parquet file (x0..x4, customer_id, segment), depth 3
    churn:2     the same file, depth 2: answers differ from churn:1's, so variants are visible
    churn_bc:1  the same columns, trained only on segments b and c (its levels differ from churn:1's)

and one user with a never-expiring token per role. Tests copy it into their own folder, so
every box is private and real (SQLite, Parquet, artifacts). Servers are real `mlbox serve`
subprocesses on a free loopback port in their own process group: test_server_entities,
_errors and _routing share one (`shared_server`), each test adding deployments of its own —
a running server picks them up without a restart; the shadow and prediction-log modules
start their own with the settings they need. Teardown stops every process a server started.

The box's admin is the kernel OS user of the test process (`OS_USER`); every subprocess runs
as that user with LOGNAME/USER naming someone else (tests/conftest.py) and no MLBOX_TOKEN.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.project import init_project
from mlbox.train.runner import train
from mlbox.train.spec import TrainSpec, parse_spec

from ..conftest import MLBOX_SCRIPT, OS_USER, wait_for
from ._cases import GOOD

FAST_XGB = {"n_estimators": 10, "max_depth": 3, "learning_rate": 0.3}
ROLES = ("admin", "ml-engineer", "data-scientist", "service", "viewer")


@dataclass(frozen=True)
class Template:
    home: Path
    tokens: dict[str, str]  # role -> token (valid in every copy of the box)


# data and template -------------------------------------------------------------------------


def plain_frame(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Five numeric features, an integer customer id and a categorical segment; y depends on x0..x2 and segment."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(5)})
    frame["customer_id"] = np.arange(1, n + 1, dtype=np.int64)
    frame["segment"] = rng.choice(["a", "b", "c"], size=n)
    shift = np.select([frame.segment == "a", frame.segment == "c"], [1.5, -1.5], 0.0)
    logit = 1.5 * frame.x0 + frame.x1 - 0.5 * frame.x2 + shift
    frame["y"] = (logit + 0.5 * rng.logistic(size=n) > 0).astype(int)
    return frame


def sample_rows(n: int, seed: int = 1, segments: tuple[str, ...] = ("a", "b", "c")) -> list[dict[str, Any]]:
    """Valid request rows for the plain models (churn:*)."""
    rng = np.random.default_rng(seed)
    return [
        {**{f"x{i}": round(float(rng.normal()), 4) for i in range(5)},
         "customer_id": int(rng.integers(1, 5000)), "segment": str(rng.choice(segments))}
        for _ in range(n)
    ]  # fmt: skip


def _plain_spec(home: Path, path: str, model: str, **params: Any) -> TrainSpec:
    raw = {
        "experiment": model, "model": model, "task": "classification", "target": "y", "flavor": "xgboost",
        "data": {"path": path}, "params": {**FAST_XGB, **params}, "device": "cpu",
    }  # fmt: skip
    return parse_spec(raw, "serve-test spec", home)


def open_box(home: Path) -> Box:
    box = Box.create(load_settings(home, environ={}), OS_USER)
    box.actor = OS_USER
    return box


@pytest.fixture(scope="session")
def serve_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The trained box described in the module docstring, built once per session."""
    from threadpoolctl import threadpool_limits

    home = tmp_path_factory.mktemp("serve-template") / "box"
    init_project(home, "tabular-classification")
    tokens: dict[str, str] = {}
    with open_box(home) as box, threadpool_limits(limits=1):
        fs = box.features
        fs.apply(fs.load(), OS_USER)
        for view in fs.catalog.latest_views():
            fs.ingest(view.name, actor=OS_USER)
        fs.materialize(actor=OS_USER)
        raw = yaml.safe_load((home / "train.yaml").read_text())
        raw.update(params=FAST_XGB, model="churn_fs", device="cpu")
        raw.pop("gate", None)
        frame = plain_frame()
        frame.to_parquet(home / "plain.parquet")
        frame[frame.segment != "a"].to_parquet(home / "plain_bc.parquet")
        for spec, store in [
            (parse_spec(raw, "train.yaml", home), fs),
            (_plain_spec(home, "plain.parquet", "churn"), None),
            (_plain_spec(home, "plain.parquet", "churn", max_depth=2, learning_rate=0.5), None),
            (_plain_spec(home, "plain_bc.parquet", "churn_bc"), None),
        ]:
            train(spec, store=store, tracking=box.tracking, registry=box.registry, actor=OS_USER, register=True)

        for role in ROLES:
            user = OS_USER if role == "admin" else role.replace("-", "_")
            if role != "admin":
                box.identity.add_user(OS_USER, user, role)
            tokens[role] = box.identity.create_token(OS_USER, user, never_expires=True)[1]
    return Template(home, tokens)


def meta_rows(home: Path, sql: str) -> list[dict[str, Any]]:
    """Rows of a query on the box's meta.db."""
    with open_box(home) as box:
        return [dict(r) for r in box.db.query(sql)]


def copy_box(template: Template, dest: Path) -> Path:
    shutil.copytree(template.home, dest)
    return dest


# subprocesses ------------------------------------------------------------------------------


def subprocess_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a `mlbox` subprocess: this box, the kernel OS user, no MLBOX_TOKEN, extra MLBOX_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLBOX_")}
    private_home = home.parent / "_home"
    private_home.mkdir(exist_ok=True)
    env.update(
        MLBOX_HOME=str(home),
        HOME=str(private_home),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        NO_COLOR="1",
        COLUMNS="250",
        OMP_NUM_THREADS="1",
    )
    env.update(settings)
    return env


def mlbox(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real `mlbox` console script on `home`."""
    return subprocess.run(
        [str(MLBOX_SCRIPT), *args], env=subprocess_env(home), capture_output=True, text=True, timeout=timeout, cwd=home
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running `mlbox serve` in its own process group."""

    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def auth(self, role: str = "service") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if self.tokens else {}

    def predict(self, deployment: str, rows: list[dict[str, Any]], role: str = "service", **kw: Any) -> httpx.Response:
        return self.client.post(f"/v1/deployments/{deployment}/predict", json={"rows": rows}, headers=self.auth(role), **kw)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.client.get("/metrics").text)

    def wait_serving(self, name: str, timeout: float = 10) -> dict[str, Any]:
        """Wait until the server serves deployment `name` at its current revision in meta.db."""

        def serving() -> dict[str, Any] | None:
            r = self.client.get(f"/v1/deployments/{name}", headers=self.auth("viewer"))
            if r.status_code == 200 and r.json()["serving_revision"] == r.json()["revision"]:
                return dict(r.json())
            return None

        return dict(wait_for(serving, timeout, f"the server to serve {name!r}"))

    def family(self) -> list[psutil.Process]:
        """The server and every process under it. BentoML starts its workers in sessions of their own, so the
        server's process group does not hold them: SIGKILL to the group alone would leave them serving."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the process group and wait: the server and all its workers must exit in time."""
        self.client.close()
        family = self.family()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            code = int(self.proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            self.terminate()
            raise AssertionError(f"mlbox serve ignored SIGTERM for {timeout} s\n{self.log_tail()}") from None
        _, alive = psutil.wait_procs(family, timeout=10)
        if alive:
            self.terminate(alive)
            raise AssertionError(f"processes outlived a clean shutdown of mlbox serve: {[p.pid for p in alive]}")
        return code

    def terminate(self, family: list[psutil.Process] | None = None) -> None:
        """Teardown: stop the server and everything it started, whatever state it is in."""
        self.client.close()
        family = self.family() if family is None else family
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # a clean stop first: the server stops its workers
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(family, timeout=5)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def start_server(home: Path, tokens: dict[str, str] | None = None, **settings: str) -> Server:
    """`mlbox serve --port P` on `home` with MLBOX_* `settings`; returns once /readyz answers 200."""
    port = free_port()
    log = home.parent / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(MLBOX_SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=subprocess_env(home, **settings),
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(home, port, proc, log, dict(tokens or {}))
    timeout = 90.0
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            server.terminate()
            raise AssertionError(f"mlbox serve exited with {proc.returncode}\n{server.log_tail()}")
        try:
            if server.client.get("/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.terminate()
            raise AssertionError(f"mlbox serve not ready after {timeout} s\n{server.log_tail()}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_server(home: Path, tokens: dict[str, str] | None = None, **settings: str) -> Iterator[Server]:
    """A server for the `with` block; its whole process group is killed afterwards, whatever happened."""
    server = start_server(home, tokens, **settings)
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="package")
def shared_server(serve_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `mlbox serve` for the test_server_*.py modules that only add deployments of their own.

    It starts with `bad` (churn:1, never changed) and `fs` (churn_fs:1); serve.max_rows is 50
    and serve.max_concurrency 1, so a test can show that a slow upload does not hold that one slot.
    """
    home = copy_box(serve_template, tmp_path_factory.mktemp("shared") / "box")
    with open_box(home) as box:
        box.deployments.create("bad", "churn:1", OS_USER)
        box.deployments.create("fs", "churn_fs:1", OS_USER)
    with running_server(home, serve_template.tokens, MLBOX_SERVE_MAX_ROWS="50", MLBOX_SERVE_MAX_CONCURRENCY="1") as server:
        yield server


def deploy(
    server: Server, name: str, primary: str, *, canary: str | None = None, weight: float = 0.0,
    sticky_key: str | None = None, shadow: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Create a deployment on the server's box (through the service, not HTTP) and wait until it is served."""
    with open_box(server.home) as box:
        box.deployments.create(name, primary, OS_USER)
        if canary:
            box.deployments.canary(name, canary, weight, OS_USER, sticky_key)
        if shadow:
            box.deployments.shadow(name, shadow, OS_USER)
    return server.wait_serving(name)


# helpers -------------------------------------------------------------------------------------


LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def sample_key(key: str) -> str:
    """'name{labels}' with the labels in one order (sorted, `le` last), however `key` orders them."""
    name, _, rest = key.partition("{")
    labels = sorted(LABEL.findall(rest), key=lambda kv: (kv[0] == "le", kv[0]))
    return name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else "")


class Samples(dict[str, float]):
    """Samples by 'name{labels}'; a key may list its labels in any order (Prometheus gives them no order)."""

    def __getitem__(self, key: str) -> float:
        return super().__getitem__(sample_key(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(sample_key(key))

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(sample_key(key), default)


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition, parsed by prometheus_client, as {'name{labels}': value} (see `sample_key`)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = Samples()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
            dict.__setitem__(out, sample_key(s.name + ("{" + labels + "}" if labels else "")), float(s.value))
    return out


def assert_error(response: httpx.Response, status: int, code: str | None = None, mentions: tuple[str, ...] = ()) -> dict[str, Any]:
    """`response` is mlbox's JSON error envelope with `status` (and `code`); its message names `mentions`."""
    assert response.status_code == status, f"{response.status_code} != {status}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"status", "code", "message", "hint"}, error
    assert error["status"] == status
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["hint"] is None or isinstance(error["hint"], str)
    if code is not None:
        assert error["code"] == code, error
    for word in mentions:
        assert word in error["message"], f"{word!r} not in {error['message']!r}"
    return dict(error)


class AsgiClient:
    """A synchronous face on httpx.ASGITransport: each call runs one request through the app in-process."""

    def __init__(self, app: Any, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = headers or {}

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://mlbox.test") as client:
                return await client.request(method, url, **kw)

        return asyncio.run(go())

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# OpenAPI against a client (in-process or a real server) ------------------------------------

# a body per operation that gets past validation, so an unknown deployment is what fails
PROBE_BODY: dict[str, Any] = {
    "/v1/deployments/{name}/predict": {"rows": [GOOD]},
    "/v1/deployments/{name}/canary": {"model": "churn:2"},
    "/v1/deployments/{name}/shadow": {"model": "churn:2"},
    "/v1/features/online": {"features": ["usage:calls"], "entities": [{"customer_id": 1001}]},
    "/v1/console/deployments/{name}/weight": {"weight": 10},
    "/v1/console/deployments/{name}/canary": {"model": "churn:2", "weight": 10},
    "/v1/console/deployments/{name}/shadow": {"model": None},
    "/v1/console/models/{ref}/promote": {"alias": "staging"},
}
# the console's other path parameters (api/manage.py): an unknown job or check, a model and a view that do not exist
PROBE_PARAMS = {"{id}": "999", "{ref}": "nope:1", "{view}": "nope"}


def check_documented_operations(client: Any, tokens: dict[str, str]) -> None:
    """Every operation in /openapi.json exists: public ones answer 200; the others 401 without a token and
    404 for an unknown deployment, both documented and both in the envelope."""
    doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {tokens['viewer']}"}).json()
    for template, ops in doc["paths"].items():
        for method, op in ops.items():
            path = template.replace("{name}", "bad")
            for param, value in PROBE_PARAMS.items():
                path = path.replace(param, value)
            if op.get("security") == []:
                assert client.request(method.upper(), path).status_code == 200, path
                continue
            response = client.request(method.upper(), path, json=PROBE_BODY.get(template, {}))
            assert_error(response, 401, "unauthenticated")
            assert "401" in op["responses"], (method, template)
            if "{name}" in template:
                admin = {"Authorization": f"Bearer {tokens['admin']}"}
                unknown = client.request(method.upper(), path.replace("/bad", "/nope"), json=PROBE_BODY.get(template, {}), headers=admin)
                assert_error(unknown, 404, "not_found", ("nope",))
                assert "404" in op["responses"], (method, template)
