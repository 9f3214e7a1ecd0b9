"""The twin boxes of `mlbox bench encryption` and the operations timed on each: built the same way, one encrypted.

Each `Side` is one box (plain or encrypted) with the same view, the same ingested batches and
the same model (trained with the same seed on the same file) deployed as `bench`; while
predictions are measured, each runs its own `mlbox serve` (one worker, prediction log on), as
`mlbox bench serve` does. Each operation here takes a side and returns one round's figure;
the caller alternates the sides and takes medians (mlbox/bench/encryption.py).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from mlbox.box import Box
from mlbox.config import child_env, load_settings
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.offline import connect
from mlbox.features.pit import lit
from mlbox.security.osuser import effective_os_user

VIEW = "events"
DEPLOYMENT = "bench"
MODEL_FEATURES = 20
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Sizes:
    """What the operations work on (see encryption.Scale, which adds the rounds)."""

    entities: int
    rows_per_entity: int  # one ingested batch: entities x rows_per_entity rows
    features: int
    labels: int
    trees: int
    log_records: int  # records in one prediction-log flush


@dataclass
class Side:
    """One of the twin boxes, open, with what its operations need."""

    name: str  # "plain" | "encrypted"
    home: Path
    box: Box
    ref: str = ""  # the deployed model version
    server: subprocess.Popen[bytes] | None = None  # its `mlbox serve`, while running
    port: int = 0
    token: str = ""
    answered: int = 0  # predictions answered by its server, warm-ups excluded


def make_data(work: Path, s: Sizes, batches: int) -> tuple[list[Path], Path, Path]:
    """Seeded data outside the boxes: `batches` disjoint feature batches, labels over all of them, a training file."""
    from mlbox.bench.train import TrainScale, _make

    work.mkdir(parents=True, exist_ok=True)
    con = connect()
    try:
        con.execute("SELECT setseed(0.42)")
        feats = ", ".join(f"random() AS f{i}" for i in range(s.features))
        sources = []
        for b in range(batches):  # batch b holds hours [b*R, (b+1)*R) of every entity: no (entity, ts) repeats
            path = work / f"batch{b}.parquet"
            con.execute(
                f"COPY (SELECT e AS entity_id, TIMESTAMPTZ '2025-01-01' + to_minutes(({b * s.rows_per_entity} + t) * 60 "
                f"+ (hash(e, t, {b}) % 60)::BIGINT) AS ts, {feats} FROM range({s.entities}) r(e), "
                f"range({s.rows_per_entity}) u(t)) TO {lit(path)} (FORMAT parquet)"
            )
            sources.append(path)
        labels = work / "labels.parquet"
        span = batches * s.rows_per_entity * 60
        con.execute(
            f"COPY (SELECT (hash(i, 1) % {s.entities})::BIGINT AS entity_id, TIMESTAMPTZ '2025-01-01' + "
            f"to_minutes((hash(i, 2) % {span + 120})::BIGINT) AS ts, (hash(i, 3) % 2)::BIGINT AS label "
            f"FROM range({s.labels}) r(i)) TO {lit(labels)} (FORMAT parquet)"
        )
    finally:
        con.close()
    train_file = work / "train.parquet"
    _make(train_file, TrainScale(5_000, MODEL_FEATURES, s.trees, 0))
    return sources, labels, train_file


def create_box(home: Path, *, encrypted: bool) -> Box:
    """A fresh box, as `mlbox init [--encrypt]` makes it: encrypted, its keyring exists before any database has a page."""
    return Box.create(load_settings(home, environ={}), effective_os_user(), encrypt=encrypted)


def prepare(side: Side, s: Sizes, train_file: Path, work: Path) -> None:
    """Views, the model trained and deployed: identical in both boxes."""
    from mlbox.train.runner import train
    from mlbox.train.spec import parse_spec

    box, me = side.box, effective_os_user()
    fields = tuple(Field(f"f{i}", "float64") for i in range(s.features))
    box.features.apply([Entity("entity", {"entity_id": "int64"}), FeatureView(VIEW, "entity", "ts", fields, ttl="3650d")])
    spec = {"experiment": "bench", "task": "classification", "target": "y", "flavor": "xgboost", "seed": 1,
            "data": {"path": str(train_file)}, "params": {"n_estimators": s.trees, "max_depth": 6},
            "split": {"method": "random", "test_size": 0.2, "valid_size": 0}, "device": "cpu"}  # fmt: skip
    trained = train(parse_spec(spec, base_dir=work), store=None, tracking=box.tracking, registry=box.registry,
                    actor=me, register=True)  # fmt: skip
    assert trained.version is not None
    side.ref = trained.version.ref
    box.deployments.create(DEPLOYMENT, side.ref, me)


def start_server(side: Side, work: Path) -> None:
    """`mlbox serve` on the box, one worker, prediction logging on, and a service token to call it with."""
    from mlbox.serve import process as server

    box, me = side.box, effective_os_user()
    box.identity.add_user(me, "bench-client", "service")
    side.token = box.identity.create_token(me, "bench-client", "service", 3600)[1]
    side.port = server.free_port()
    env = child_env(drop=("MLBOX_TOKEN",), BENTOML_DO_NOT_TRACK="True", BENTOML_HOME=str(work / "bentoml"),
                    MLBOX_HOME=str(side.home), MLBOX_SERVE_WORKERS="1")  # fmt: skip
    cmd = [sys.executable, "-m", "mlbox", "serve", "--host", "127.0.0.1", "--port", str(side.port)]
    side.server = server.start(cmd, env, side.port, work / f"serve-{side.name}.log")


def stop_server(side: Side) -> None:
    from mlbox.serve import process as server

    if side.server is not None:
        server.stop(side.server)  # SIGTERM: the worker's sidecar flushes the prediction log
        side.server = None


# one round's figure of each operation ---------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def p50_us(fn: Callable[[], Any], n: int) -> float:
    """Median microseconds of `n` calls after min(50, n) warm-up calls (`bench features`' own timer)."""
    from mlbox.bench.features import p50_ms

    return p50_ms(fn, n) * 1e3


def ingest(side: Side, source: Path) -> float:
    return timed(lambda: side.box.features.ingest(VIEW, source))


def training_set(side: Side, labels: Path) -> float:
    return timed(lambda: side.box.features.training_set(labels, [f"{VIEW}:*"], as_arrow=True, timestamp="ts"))


def materialize(side: Side) -> float:
    return timed(lambda: side.box.features.materialize(VIEW, full=True))


def lookup(side: Side, s: Sizes, n: int) -> float:
    """p50 of single-entity lookups, the entity changing each call (a stride over every page of the table)."""
    refs = [f"{VIEW}:f{i}" for i in range(s.features)]
    rows = itertools.cycle([[{"entity_id": (i * 7919) % s.entities}] for i in range(min(s.entities, 10_000))])
    return p50_us(lambda: side.box.features.get_online_features(refs, next(rows)), n)


def model_load(side: Side) -> float:
    """A cold load of the deployed version: registry row, verified (and decrypted) artifact, onnxruntime session."""
    from mlbox.serve.runtime import ModelCache

    return timed(lambda: ModelCache(side.box.registry, int(side.box.settings["serve.threads"])).get(side.ref))


def predict(side: Side, seconds: float, body: Path) -> dict[str, Any]:
    """One closed-loop run (one connection) of one-row predictions against the side's server: the loadgen's figures."""
    from mlbox.bench.serve import load

    result = load(side.port, f"/v1/deployments/{DEPLOYMENT}/predict", 1, seconds, body, side.token)
    if result["errors"]:
        raise RuntimeError(f"mlbox serve on the {side.name} box answered {result['errors']} requests with an error")
    side.answered += int(result["requests"])
    return result


def logged(side: Side) -> int:
    """Records in the side's prediction log (read from its catalog)."""
    return int(side.box.db.scalar("SELECT coalesce(sum(rows), 0) FROM prediction_batches WHERE deployment = ?", (DEPLOYMENT,)))


def request_body(work: Path) -> Path:
    body = work / "body.json"
    body.write_bytes(orjson.dumps({"rows": [{f"x{i}": round(0.05 * i, 3) for i in range(MODEL_FEATURES)}]}))
    return body


def log_flush(side: Side, s: Sizes) -> float:
    """One flush of `log_records` records by the prediction-log writer the sidecar runs (typed columns included)."""
    from mlbox.serve.predlog.sidecar import Signatures
    from mlbox.serve.predlog.wire import Record
    from mlbox.serve.predlog.writer import PredictionLog

    log = PredictionLog(side.box.paths.predictions, side.box.db, flush_seconds=3600, max_rows=s.log_records + 1,
                        signature_of=Signatures(side.box.registry).get)  # fmt: skip
    inputs = orjson.dumps([{f"x{i}": round(0.05 * i, 3) for i in range(MODEL_FEATURES)}]).decode()
    now = time.time()
    log.extend([Record(now + i * 1e-3, f"{side.name}-{now}-{i}", DEPLOYMENT, side.ref, "primary", False, 0.4, None,
                       inputs, '[{"0": 0.25, "1": 0.75}]', None) for i in range(s.log_records)])  # fmt: skip
    log.compact()  # the sidecar compacts every 50 ms off the flush: the flush itself is what is timed
    took = timed(log.flush)
    if log.written != s.log_records:
        raise RuntimeError(f"the {side.name} box's prediction log wrote {log.written} of {s.log_records} records")
    return took


# what is really encrypted at rest -------------------------------------------------------


def at_rest(home: Path) -> dict[str, tuple[int, int]]:
    """Per store: (files encrypted, files) under the box; the databases count as encrypted when not plain SQLite."""
    from mlbox.store import crypt

    out: dict[str, tuple[int, int]] = {}
    for store, pattern in (("features", "*.parquet"), ("predictions", "*.parquet"), ("artifacts", "*")):
        # an artifact's `.hmac` holds only its MAC (no content), and dot-files are writes in progress
        files = [p for p in (home / store).rglob(pattern) if p.is_file() and not p.name.startswith(".") and p.suffix != ".hmac"]
        out[store] = (sum(crypt.is_encrypted(p) for p in files), len(files))
    for db in ("meta.db", "online.db"):
        with open(home / db, "rb") as fh:
            head = fh.read(16)
        out[db] = (int(bool(head) and head != SQLITE_MAGIC), 1)
    return out
