"""Training/serving skew over every feature dtype: predict by entity gives a model exactly its training-set row.

For N entities (some with nulls, some past the view's TTL, one unknown), the vector that
`predict` by entity builds from the online store (`entity_rows` + `encode_rows`, the
serving code itself) equals the signature's encoding of the training-set row built with
labels at the same instant, and the prediction served by a real `mlbox serve` over HTTP
equals the offline prediction of the same ONNX model on that row.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlbox.api.predict import entity_rows
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.features.definitions import DTYPES, Entity, FeatureView, Field
from mlbox.serve.runtime import LoadedModel, ModelCache
from mlbox.serve.validation import encode_rows
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

from .conftest import OS_USER
from .serve.conftest import Server, running_server

N = 80  # entities 1..N-1 have features; N is unknown
EXPIRED = range(70, 80)  # their latest row is older than the TTL now
NOW = pd.Timestamp.now(tz="UTC").floor("s")  # data are laid out around the real clock: the server uses it too
FIELDS = tuple(Field(f"f_{dtype}", dtype) for dtype in DTYPES)  # every supported dtype
VIEW = FeatureView("skew", "customer", "ts", FIELDS, ttl="7d")


def _value(dtype: str, rng: random.Random) -> Any:
    if rng.random() < 0.12:
        return None
    return {
        "int64": lambda: rng.randrange(-(2**40), 2**40),
        "int32": lambda: rng.randrange(-1000, 1000),
        "float64": lambda: rng.gauss(0, 3),
        "float32": lambda: float(np.float32(rng.gauss(0, 3))),
        "string": lambda: rng.choice(["red", "green", "blue"]),
        "bool": lambda: rng.random() < 0.5,
        "timestamp": lambda: (NOW - pd.Timedelta(seconds=rng.randrange(10**7), microseconds=rng.randrange(10**6))).to_pydatetime(),
        "date": lambda: (NOW - pd.Timedelta(days=rng.randrange(3000))).date(),
    }[dtype]()


def _features() -> pd.DataFrame:
    rng = random.Random(42)
    rows = []
    for e in range(1, N):
        ages = [30, 20, 12, 10] if e in EXPIRED else [30, 20, 12, 1]
        for days in ages:
            when = NOW - pd.Timedelta(days=days) + pd.Timedelta(minutes=rng.randrange(600))
            rows.append({"customer_id": e, "ts": when, **{f.name: _value(f.dtype, rng) for f in FIELDS}})
    frame = pd.DataFrame(rows)
    nullable = {"int64": "Int64", "int32": "Int32", "float32": "float32", "bool": "boolean"}
    for f in FIELDS:
        if f.dtype in nullable:
            frame[f.name] = frame[f.name].astype(nullable[f.dtype])
        elif f.dtype == "timestamp":
            frame[f.name] = pd.to_datetime(frame[f.name], utc=True)
    return frame


def _labels(features: pd.DataFrame) -> pd.DataFrame:
    """Training labels: three per entity, the target a function of the features (so the model uses them)."""
    rng = random.Random(7)
    rows = []
    for e in range(1, N):
        for days in (25, 15, 11):
            rows.append({"customer_id": e, "ts": NOW - pd.Timedelta(days=days), "y": int(rng.random() < (0.8 if e % 2 else 0.2))})
    return pd.DataFrame(rows)


@dataclass
class World:
    home: Path
    box: Box
    model: LoadedModel
    token: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("skew") / "box"
    home.mkdir()
    box = Box.create(load_settings(home, environ={}), OS_USER)
    box.actor = OS_USER
    fs = box.features
    fs.apply([Entity("customer", {"customer_id": "int64"}), VIEW], OS_USER)
    features = _features()
    half = len(features) // 2
    fs.ingest("skew", features.iloc[:half], OS_USER)  # two batches
    fs.ingest("skew", features.iloc[half:], OS_USER)
    _labels(features).to_parquet(home / "labels.parquet")
    raw = {
        "experiment": "skew",
        "model": "skew",
        "task": "classification",
        "data": {"labels": "labels.parquet", "timestamp": "ts", "features": ["skew:*"]},
        "target": "y",
        "flavor": "xgboost",
        "params": {"n_estimators": 15, "max_depth": 3, "learning_rate": 0.3},
        "split": {"method": "random", "test_size": 0.2},
        "metrics": ["accuracy"],
        "seed": 1,
        "device": "cpu",
    }
    result = train(parse_spec(raw, "train.yaml", home), store=fs, tracking=box.tracking, registry=box.registry, actor=OS_USER, register=True)
    assert result.version is not None
    fs.materialize(actor=OS_USER)
    box.deployments.create("skew", result.version.ref, OS_USER)
    token = box.identity.create_token(OS_USER, OS_USER, never_expires=True)[1]
    model = ModelCache(box.registry, threads=1).get(result.version.ref)
    yield World(home, box, model, token)
    box.close()


def _offline(world: World) -> tuple[pd.DataFrame, np.ndarray]:
    """The training-set rows of every entity with labels at now, encoded as in training."""
    labels = pd.DataFrame({"customer_id": list(range(1, N + 1)), "ts": [pd.Timestamp.now(tz="UTC")] * N})
    frame = world.box.features.training_set(labels, ["skew:*"], timestamp="ts").frame
    return frame, world.model.signature.encode(frame)


def _online(world: World) -> np.ndarray:
    """What `predict` by entity builds: online rows through the serving code, encoded as a request."""
    ctx = SimpleNamespace(box=world.box)  # entity_rows reads only ctx.box.features
    entities = [{"customer_id": e} for e in range(1, N + 1)]
    return encode_rows(world.model.signature, entity_rows(ctx, world.model, entities), "entities", allow_null=True)  # type: ignore[arg-type]


def test_the_signature_covers_every_dtype(world: World) -> None:
    columns = {c.name: c for c in world.model.signature.columns}
    assert set(columns) == {f.name for f in FIELDS}
    assert (columns["f_timestamp"].kind, columns["f_date"].kind) == ("numeric", "numeric")  # seconds since the epoch
    assert columns["f_bool"].kind == "categorical" and columns["f_bool"].levels == ("False", "True")
    assert columns["f_string"].levels == ("blue", "green", "red")
    assert all(world.model.feature_refs[f.name] == f"skew@1:{f.name}" for f in FIELDS)


def test_online_vector_equals_the_training_set_row_at_the_same_instant(world: World) -> None:
    frame, offline = _offline(world)
    online = _online(world)
    names = world.model.signature.names
    np.testing.assert_array_equal(online, offline)  # NaN where NaN, every other value bit for bit
    # the comparison is not vacuous: real values of every dtype, nulls, expired and unknown entities
    present = ~np.isnan(offline[: min(EXPIRED) - 1])
    assert present.any(axis=0).all() and not present.all()  # every feature has values, and some nulls
    assert np.isnan(offline[[e - 1 for e in EXPIRED]]).all() and np.isnan(offline[N - 1]).all()
    t = names.index("f_timestamp")
    row = next(i for i in range(len(frame)) if not pd.isna(frame["f_timestamp"].iloc[i]))
    assert offline[row, t] == np.float32(frame["f_timestamp"].iloc[row].timestamp())


def test_served_predictions_over_http_equal_offline_predictions(world: World) -> None:
    _, offline = _offline(world)
    expected = world.model.outputs(world.model.predict(offline))
    assert len({repr(p) for p in expected}) > 2  # different rows, different answers
    with running_server(world.home, {"admin": world.token}) as server:
        served = _predict(server, [{"customer_id": e} for e in range(1, N + 1)])
        one = _predict(server, [{"customer_id": 3}])
    assert served["model"] == world.model.ref
    assert served["predictions"] == expected
    assert one["predictions"] == [expected[2]]


def _predict(server: Server, entities: list[dict[str, Any]]) -> dict[str, Any]:
    response = server.client.post("/v1/deployments/skew/predict", json={"entities": entities}, headers=server.auth("admin"))
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_rows_request_with_epoch_seconds_encodes_like_the_training_row(world: World) -> None:
    """A client sending "rows" sends timestamps and dates as seconds since the epoch, booleans as booleans."""
    frame, offline = _offline(world)
    rows = []
    for i in range(len(frame)):
        row: dict[str, Any] = {}
        for f in FIELDS:
            v = frame[f.name].iloc[i]
            if pd.isna(v):
                row[f.name] = None
            elif f.dtype in ("timestamp", "date"):
                moment = pd.Timestamp(v)
                row[f.name] = (moment if moment.tzinfo else moment.tz_localize("UTC")).timestamp()
            else:
                row[f.name] = v.item() if hasattr(v, "item") else v
        rows.append(row)
    np.testing.assert_array_equal(encode_rows(world.model.signature, rows, "rows", allow_null=True), offline)
    assert {type(r["f_bool"]) for r in rows} == {bool, type(None)}  # booleans travel as JSON booleans
