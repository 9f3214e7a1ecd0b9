"""The prediction log, label batches, batch scoring and retention in an encrypted box: ciphertext at rest, same reads.

One encrypted box (keyring made before any database existed) with a small xgboost model
deployed twice. Files are written by the real writer, `labels ingest`, the purge and batch
scoring; each is shown encrypted (a copy taken out of the box is refused by pyarrow and DuckDB,
and the logged values are not in its bytes) and read back by what reads it in a plain box:
drift checks (typed columns through pyarrow, JSON through DuckDB), serving statistics, the
quality join. The sidecar process is started as a worker starts it, with the master key given
only by an environment variable.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbox.api.context import sidecar_env
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.flavors.signature import Signature
from mlbox.monitor.logread import log_files
from mlbox.monitor.quality import labelled_rows
from mlbox.monitor.window import Window
from mlbox.privacy.retention import purge
from mlbox.serve.batch import predict_file
from mlbox.serve.labels import ingest_labels
from mlbox.serve.predlog.wire import Record, encode_frame
from mlbox.serve.predlog.writer import PredictionLog
from mlbox.store import crypt, keyring
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec

from ..conftest import OS_USER

N = 2000
MARK = "logged.only.k4v8@secret.example"  # in every logged entity: never in a file's bytes
DAY = 86400.0


def frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(4)})
    out["x0"] += shift
    out["segment"] = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    out["y"] = ((out.x0 + out.x1 + (out.segment == "a")) > 0.5).astype(int)
    return out


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    home = tmp_path_factory.mktemp("enc-logs") / "box"
    home.mkdir()
    frame(3000, 0).to_parquet(home / "train.parquet")  # the user's training file (plain)
    (home / "mlbox.toml").write_text('[privacy]\ndeployment_retention = "old=30d"\n')
    b = Box.create(load_settings(home, environ={}), OS_USER, encrypt=True)
    b.actor = OS_USER
    raw = {"experiment": "m", "model": "m", "task": "classification", "target": "y", "flavor": "xgboost",
           "data": {"path": "train.parquet"}, "params": {"n_estimators": 10, "max_depth": 3}, "device": "cpu"}  # fmt: skip
    train(parse_spec(raw, "spec", home), store=None, tracking=b.tracking, registry=b.registry, actor=OS_USER, register=True)
    for name in ("dep", "lab", "old"):
        b.deployments.create(name, "m:1", OS_USER)
    yield b
    b.close()
    keyring.unregister(home)


def records(rows: pd.DataFrame, deployment: str, tag: str, *, ts: float | None = None) -> list[Record]:
    """One record per row, its request id unique to `tag`, its entity carrying MARK."""
    now = time.time() - 60 if ts is None else ts  # in the past: a window ends at the check's now
    out = []
    for i, row in enumerate(rows.drop(columns=["y"]).to_dict(orient="records")):
        out.append(Record(now + i * 1e-3, f"req-{tag}-{i:05d}", deployment, "m:1", "primary", False, 1.0,
                          orjson.dumps([{"email": MARK}]).decode(), orjson.dumps([row]).decode(),
                          orjson.dumps([{"0": 0.4, "1": 0.6}]).decode(), None))  # fmt: skip
    return out


def log(b: Box, recs: list[Record], *, typed: bool = True) -> list[Path]:
    """Write `recs` through the real writer (typed columns from the model's signature); the files it added."""
    before = {r["path"] for r in b.db.query("SELECT path FROM prediction_batches")}
    signature = Signature.from_dict(b.registry.get("m:1").signature)
    writer = PredictionLog(b.paths.predictions, b.db, flush_seconds=3600, signature_of=(lambda _r: signature) if typed else None)
    writer.extend(recs)
    writer.flush()
    writer.close()
    return [b.paths.home / r["path"] for r in b.db.query("SELECT path FROM prediction_batches ORDER BY id") if r["path"] not in before]


def clear(b: Box, deployment: str) -> None:
    b.db.execute("DELETE FROM prediction_batches WHERE deployment = ?", (deployment,))


def refused_out_of_the_box(path: Path, tmp: Path, *plaintexts: str) -> None:
    """A copy of `path` outside the box: pyarrow and DuckDB refuse it, and none of `plaintexts` is in its bytes."""
    copied = tmp / f"copied-{path.name}"
    shutil.copyfile(path, copied)
    data = copied.read_bytes()
    assert crypt.is_encrypted(copied) and data.endswith(b"PARE")
    for text in plaintexts:
        assert len(text) >= 8, "a short marker matches random ciphertext by chance"
        assert text.encode() not in data, text
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(copied)
    with pytest.raises(duckdb.Error):
        duckdb.connect().execute(f"SELECT * FROM read_parquet('{copied}')").fetchall()
    with pytest.raises(crypt.KeyProblem, match="encrypted and no key"):
        crypt.read_table(copied)  # outside every box: mlbox itself has no key for it


def test_a_logged_prediction_file_is_encrypted_and_unreadable_copied_out(box: Box, tmp_path: Path) -> None:
    recs = records(frame(50, 1), "leak", "leak")
    (path,) = log(box, recs)
    assert crypt.is_encrypted(path)
    refused_out_of_the_box(path, tmp_path, MARK, recs[0].request_id, recs[7].request_id)  # (a 2-byte column name would match random ciphertext now and then)
    table = crypt.read_table(path)  # in the box: every value back, typed columns included
    assert table.column("request_id").to_pylist() == [r.request_id for r in recs]
    assert table.column("entity").to_pylist()[0] == recs[0].entity
    assert table.column("n.x0").to_pylist()[3] == [float(np.float32(orjson.loads(recs[3].inputs)[0]["x0"]))]


def test_drift_checks_and_serving_statistics_read_the_encrypted_log(box: Box) -> None:
    results = []
    for typed in (True, False):  # typed columns through pyarrow; the JSON through a decrypting DuckDB scan
        clear(box, "dep")
        files = log(box, records(frame(N, 7), "dep", f"calm{typed}"), typed=typed)
        assert files and all(crypt.is_encrypted(f) for f in files)
        results.append(box.monitor.check("dep", Window.parse(last="1h"), record=False))
    assert results[0].as_dict()["variants"] == results[1].as_dict()["variants"]
    calm = results[0].variants["primary"]
    assert calm.rows == N and not calm.drifted
    last_rows = box.monitor.check("dep", Window.parse(last="1h", last_rows=100), record=False)
    assert last_rows.variants["primary"].rows == 100
    log(box, records(frame(N, 9), "dep", "typed-again"))  # a typed file beside the untyped one: schemas unified
    assert box.monitor.check("dep", Window.parse(last="1h"), record=False).variants["primary"].rows == 2 * N
    serving = box.monitor.serving("dep", Window.parse(last="1h"))
    assert serving["primary"]["requests"] == 2 * N and serving["primary"]["errors"] == 0
    clear(box, "dep")
    log(box, records(frame(N, 8, shift=0.8), "dep", "moved"))
    moved = box.monitor.check("dep", Window.parse(last="1h"), record=False).variants["primary"]
    assert moved.rows == N and moved.features["x0"].drifted and not moved.features["x3"].drifted


def test_labels_ingest_writes_encrypted_batches_and_quality_joins_them(box: Box, tmp_path: Path) -> None:
    recs = records(frame(40, 3), "lab", "lab")
    log(box, recs)
    first = tmp_path / "labels.csv"  # the user's file, outside the box
    first.write_text("request_id,label\n" + "".join(f"{r.request_id},1\n" for r in recs[:30]))
    result = ingest_labels(box.db, box.audit, box.paths.predictions, "lab", first, OS_USER)
    assert (result.rows, result.matched) == (30, 30)
    batch = box.paths.home / result.path
    assert crypt.is_encrypted(batch)
    refused_out_of_the_box(batch, tmp_path, recs[0].request_id, recs[29].request_id)
    # a later file relabels two requests: the newer batch wins (its rows are ranked by position, decrypted)
    second = tmp_path / "again.csv"
    second.write_text(f"request_id,label\n{recs[0].request_id},0\n{recs[1].request_id},0\n")
    ingest_labels(box.db, box.audit, box.paths.predictions, "lab", second, OS_USER)
    quality = box.monitor.quality("lab", Window.parse(last="1h"), record=False)["variants"]["primary"]
    assert (quality["rows"], quality["labelled"], quality["scored"]) == (40, 30, 30)
    joined = labelled_rows(log_files(box.db, box.paths.home, "lab", None, None), box.monitor.label_files("lab"), None, None)
    labels = dict(zip(joined["request_id"], joined["label"], strict=True))
    assert labels[recs[0].request_id] == labels[recs[1].request_id] == "0" and labels[recs[2].request_id] == "1"
    assert pd.isna(labels[recs[35].request_id])


def test_retention_purge_rewrites_an_encrypted_log_and_its_labels_encrypted(box: Box, tmp_path: Path) -> None:
    now = time.time()
    old, new = records(frame(6, 4), "old", "aged", ts=now - 40 * DAY), records(frame(4, 5), "old", "fresh")
    (path,) = log(box, old + new)  # one file straddling the cutoff
    labels = tmp_path / "old.csv"
    labels.write_text("request_id,label\n" + "".join(f"{r.request_id},1\n" for r in old[:3] + new[:2]))
    batch = box.paths.home / ingest_labels(box.db, box.audit, box.paths.predictions, "old", labels, OS_USER).path
    dry = purge(box, OS_USER, dry_run=True)
    assert {(r.store, r.target, r.rows) for r in dry.removals} == {("predictions", "old", 6), ("labels", "old", 3)}
    assert path.exists() and batch.exists()
    done = purge(box, OS_USER)
    assert {(r.store, r.target, r.rows) for r in done.removals} == {("predictions", "old", 6), ("labels", "old", 3)}
    assert not path.exists() and not batch.exists()  # replaced by rewritten copies, encrypted as the box is
    (kept_log,) = log_files(box.db, box.paths.home, "old", None, None)
    (kept_labels,) = [box.paths.home / r["path"] for r in box.db.query("SELECT path FROM label_batches WHERE deployment = 'old'")]
    assert crypt.is_encrypted(kept_log) and crypt.is_encrypted(kept_labels)
    assert crypt.read_table(kept_log).column("request_id").to_pylist() == [r.request_id for r in new]
    assert sorted(crypt.read_table(kept_labels).column("request_id").to_pylist()) == [r.request_id for r in new[:2]]
    refused_out_of_the_box(kept_log, tmp_path, MARK, new[0].request_id)
    assert purge(box, OS_USER).removals == ()  # nothing older left


def test_batch_scoring_decrypts_store_files_and_encrypts_only_into_stores(box: Box, tmp_path: Path) -> None:
    rows = frame(300, 6).drop(columns=["y"])
    rows["note"] = MARK  # an extra column is carried to the output
    home, store = box.paths.home, box.paths.home / "tmp"  # tmp: a store of the box, encrypted
    store.mkdir(exist_ok=True)
    roots = (home, tmp_path)
    crypt.write_table(pa.Table.from_pandas(rows, preserve_index=False), store / "in.parquet")
    assert crypt.is_encrypted(store / "in.parquet")
    scored = predict_file(box.registry, "m:1", store / "in.parquet", tmp_path / "scored.parquet", box=home, roots=roots)
    assert scored.rows == 300
    plain = pq.read_table(tmp_path / "scored.parquet")  # the user's own file, decrypted on the way: plain Parquet
    assert plain.column("note").to_pylist() == [MARK] * 300
    beside = predict_file(box.registry, "m:1", store / "in.parquet", home / "scored.parquet", box=home, roots=roots)
    assert beside.rows == 300 and pq.read_table(home / "scored.parquet").equals(plain)  # in the home, not a store: the user's
    rows.to_parquet(tmp_path / "in.parquet")
    sealed = predict_file(box.registry, "m:1", tmp_path / "in.parquet", store / "scored.csv", box=home, roots=roots)
    assert sealed.rows == 300 and crypt.is_encrypted(store / "scored.csv")  # a CSV into a store: sealed whole
    assert MARK.encode() not in (store / "scored.csv").read_bytes()
    text = crypt.read_bytes(store / "scored.csv").decode()
    assert text.count(MARK) == 300 and text.splitlines()[0].startswith('"x0"')
    crypt.write_bytes(store / "in.csv", rows.to_csv(index=False).encode())  # a sealed CSV input
    predict_file(box.registry, "m:1", store / "in.csv", tmp_path / "out.csv", box=home, roots=roots)
    assert pd.read_csv(tmp_path / "out.csv")["prediction"].tolist() == plain.column("prediction").to_pylist()


def test_the_sidecar_opens_the_encrypted_box_with_a_master_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "envbox"
    home.mkdir()
    (home / "mlbox.toml").write_text('[encryption]\nmaster_key = {"$env" = "BOX_MASTER_KEY"}\n')
    monkeypatch.setenv("BOX_MASTER_KEY", keyring.new_master_key())
    b = Box.create(load_settings(home), OS_USER, encrypt=True)
    try:
        assert not (home / "keys" / "master.key").exists()  # the key lives only in the environment
        recs = [Record(time.time() + i, f"req-sidecar-{i}", "side", "none:1", "primary", False, 1.0,
                       orjson.dumps([{"email": MARK}]).decode(), "[{}]", "[1]", None) for i in range(5)]  # fmt: skip
        command = [sys.executable, "-m", "mlbox.serve.predlog.sidecar", str(home), "1", "0.2", "1000"]
        done = subprocess.run(command, input=encode_frame(recs, []), env=sidecar_env(), capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        (path,) = log_files(b.db, home, "side", None, None)
        assert crypt.is_encrypted(path) and MARK.encode() not in path.read_bytes()
        assert crypt.read_table(path).column("request_id").to_pylist() == [r.request_id for r in recs]
    finally:
        b.close()
        keyring.unregister(home)
