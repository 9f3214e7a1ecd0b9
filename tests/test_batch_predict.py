"""Batch scoring (`mlbox predict`): the column encoder equals the request encoder, output equals serving, atomic files.

Real models: a classifier and a regressor (xgboost, a few trees) trained on a small frame
with an integer, a float with nulls, a nullable string category and a boolean, registered in
a real box once per module. "Served" predictions are the serving path itself on the same
rows: `encode_rows` (the request encoder) and the `LoadedModel` that `mlbox serve` loads.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import Conflict, NotFound, UsageError, ValidationError
from mlbox.flavors.signature import Signature
from mlbox.serve.batch import encode_batch, predict_file, score_file
from mlbox.serve.runtime import LoadedModel, ModelCache
from mlbox.serve.validation import encode_rows

from .conftest import MLBOX_SCRIPT, OS_USER, wait_for

PLANS = ("basic", "plus", "pro")


def scoring_frame(n: int, seed: int = 0, plans: tuple[str, ...] = PLANS) -> pd.DataFrame:
    """Features of every kind the signature has (int, float with nulls, nullable string, bool), an id, a target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "age": rng.integers(18, 90, n).astype(np.int64),
            "income": np.where(rng.random(n) < 0.1, np.nan, rng.normal(50, 10, n)),
            "plan": pd.Series(rng.choice(plans, n), dtype=object).where(rng.random(n) > 0.1, None),
            "promo": rng.random(n) < 0.5,
        }
    )
    score = (frame.age - 50) / 20 + np.nan_to_num(frame.income - 50) / 10 + frame.promo * 0.8
    frame["churned"] = (score + rng.logistic(size=n) * 0.5 > 0).astype(int)
    frame["spend"] = score * 10 + rng.normal(size=n)
    return frame


def train_models(box: Box, home: Path) -> None:
    """churn:1 (classifier) and spend:1 (regressor) in `box`, trained on `home`/train.parquet."""
    from mlbox.train.runner import train
    from mlbox.train.spec import parse_spec

    scoring_frame(600).to_parquet(home / "train.parquet")
    for model, task, target, other in (("churn", "classification", "churned", "spend"), ("spend", "regression", "spend", "churned")):
        raw = {
            "experiment": model, "model": model, "task": task, "target": target, "flavor": "xgboost", "device": "cpu",
            "data": {"path": "train.parquet", "drop": ["customer_id", other]},
            "params": {"n_estimators": 8, "max_depth": 3, "learning_rate": 0.3},
        }  # fmt: skip
        train(parse_spec(raw, "test spec", home), store=None, tracking=box.tracking, registry=box.registry, actor=OS_USER, register=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from threadpoolctl import threadpool_limits

    home = tmp_path_factory.mktemp("batch") / "box"
    with Box.create(load_settings(home, environ={}), OS_USER) as box, threadpool_limits(limits=1):
        train_models(box, home)
    return home


@pytest.fixture
def home(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained box."""
    return Path(shutil.copytree(trained, tmp_path / "box"))


@pytest.fixture
def box(home: Path) -> Iterator[Box]:
    with Box(load_settings(home, environ={})) as b:
        yield b


def served(model: LoadedModel, frame: pd.DataFrame) -> list[Any]:
    """The serving path on `frame`'s rows: request rows (JSON-like dicts) → encode_rows → session → outputs."""
    names = model.signature.names
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in frame[list(names)].to_dict("records")]
    rows = [{k: (bool(v) if isinstance(v, np.bool_) else v) for k, v in r.items()} for r in rows]
    return model.outputs(model.predict(encode_rows(model.signature, rows)))


# the column encoder -------------------------------------------------------------------


def random_batch(signature: Signature, n: int, seed: int) -> pa.RecordBatch:
    """Random values for `signature`: nulls where allowed, unseen levels, a dictionary-encoded column, extremes."""
    rng = np.random.default_rng(seed)
    arrays, names = [], []
    for col in signature.columns:
        null = rng.random(n) < (0.2 if col.nullable else 0)
        if col.kind == "numeric" and col.dtype == "int64":
            arr = pa.array(rng.integers(-(10**6), 10**6, n), mask=null)
        elif col.kind == "numeric":
            values = rng.normal(0, 1e3, n)
            values[rng.random(n) < 0.05] = 3.0e38  # near float32's limit, still in range
            arr = pa.array(values, mask=null)
        elif col.dtype == "bool":
            arr = pa.array(rng.random(n) < 0.5, mask=null)
        else:
            levels = np.array([*col.levels, "unseen", "", "BASIC"], dtype=object)
            arr = pa.array(rng.choice(levels, n), pa.string(), mask=null)
            if seed % 2:
                arr = arr.dictionary_encode()
        arrays.append(arr)
        names.append(col.name)
    arrays.append(pa.array(np.arange(n)))
    names.append("extra_id")
    return pa.RecordBatch.from_arrays(arrays, names=names)


@pytest.mark.parametrize("model_ref", ["churn:1", "spend:1"])
def test_column_encoder_equals_request_encoder_on_random_data(box: Box, model_ref: str) -> None:
    signature = Signature.from_dict(box.registry.get(model_ref).signature)
    kinds = {(c.kind, c.dtype, c.nullable) for c in signature.columns}
    assert {("numeric", "int64", False), ("numeric", "float64", True), ("categorical", "string", True), ("categorical", "bool", False)} <= kinds
    for seed in range(6):
        batch = random_batch(signature, 3000, seed)
        rows = [{k: v for k, v in r.items() if k != "extra_id"} for r in batch.to_pylist()]
        by_column, by_row = encode_batch(signature, batch), encode_rows(signature, rows)
        assert by_column.dtype == by_row.dtype == np.float32
        np.testing.assert_array_equal(by_column, by_row)  # NaN positions equal too
        plan = signature.names.index("plan")
        assert np.isnan(by_column[:, plan]).any() and not np.isnan(by_column[:, plan]).all()


def test_timestamp_and_date_columns_encode_as_training_encodes_them() -> None:
    """A file's timestamp/date columns become training's epoch seconds; seconds sent as numbers, the request's."""
    from mlbox.flavors.signature import Column, epoch_seconds

    rng = np.random.default_rng(4)
    ts = pd.Series(pd.to_datetime(rng.integers(-(2 * 10**18), 3 * 10**18, 4000), unit="ns"))
    ts[rng.random(4000) < 0.1] = pd.NaT
    signature = Signature((Column("ts", "numeric", "timestamp", (), True, True),), "regression", "y")
    trained = signature.encode(pd.DataFrame({"ts": ts}))
    for arr in (pa.array(ts), pa.array(ts.dt.tz_localize("UTC").dt.tz_convert("Asia/Dubai")), pa.array(ts.astype("datetime64[us]"))):
        np.testing.assert_array_equal(encode_batch(signature, pa.RecordBatch.from_arrays([arr], names=["ts"])), trained)
    seconds = [None if np.isnan(v) else float(v) for v in epoch_seconds(ts)]
    as_numbers = pa.RecordBatch.from_arrays([pa.array(seconds, pa.float64())], names=["ts"])
    np.testing.assert_array_equal(encode_batch(signature, as_numbers), encode_rows(signature, [{"ts": v} for v in seconds]))
    days = pd.Series(pd.to_datetime(rng.integers(-(10**9), 2 * 10**9, 500), unit="s").date)
    np.testing.assert_array_equal(
        encode_batch(signature, pa.RecordBatch.from_arrays([pa.array(days)], names=["ts"])), signature.encode(pd.DataFrame({"ts": days}))
    )
    with pytest.raises(ValidationError, match="must be a timestamp, a date or seconds"):
        encode_batch(signature, pa.RecordBatch.from_arrays([pa.array(["2026-01-01"])], names=["ts"]))


def test_column_encoder_refuses_what_the_request_encoder_refuses(box: Box) -> None:
    signature = Signature.from_dict(box.registry.get("churn:1").signature)
    good = random_batch(signature, 10, 0)

    def with_column(name: str, arr: pa.Array) -> pa.RecordBatch:
        return good.set_column(good.schema.get_field_index(name), name, arr)

    cases = {
        "may not be null": with_column("age", pa.array([None, *range(9)], pa.int64())),
        "out of range": with_column("income", pa.array([1.0] * 9 + [float("inf")])),
        "must be numeric": with_column("age", pa.array(["1"] * 10)),
        "must be a string": with_column("plan", pa.array(list(range(10)))),
    }
    for message, batch in cases.items():
        with pytest.raises(ValidationError, match=message):
            encode_batch(signature, batch, first_row=100)
        with pytest.raises(ValidationError):
            encode_rows(signature, [{k: v for k, v in r.items() if k != "extra_id"} for r in batch.to_pylist()])
    with pytest.raises(ValidationError, match=r"row 100: column 'age' may not be null"):
        encode_batch(signature, cases["may not be null"], first_row=100)
    with pytest.raises(ValidationError, match="missing feature column"):
        encode_batch(signature, good.drop_columns(["promo"]))


# files --------------------------------------------------------------------------------


@pytest.mark.parametrize("model_ref", ["churn:1", "spend:1"])
def test_batch_output_equals_served_predictions(box: Box, home: Path, model_ref: str) -> None:
    frame = scoring_frame(2500, seed=7, plans=(*PLANS, "enterprise"))  # an unseen level too
    frame.to_parquet(home / "in.parquet")
    seen: list[tuple[int, int | None]] = []
    result = predict_file(box.registry, model_ref, home / "in.parquet", home / "out.parquet", box=home, roots=[home],
                          batch_rows=1000, threads=1, progress=lambda n, t: seen.append((n, t)))  # fmt: skip
    assert seen == [(1000, 2500), (2000, 2500), (2500, 2500)]
    assert result.rows == 2500
    out = pq.read_table(home / "out.parquet").to_pandas()
    assert list(out.columns[: len(frame.columns)]) == list(frame.columns)  # input columns first, unchanged
    pd.testing.assert_frame_equal(out[frame.columns], pd.read_parquet(home / "in.parquet"))
    model = ModelCache(box.registry, 1).get(model_ref)
    # requests of the same 1000 rows on the same threads: onnxruntime's float32 sums then match to the bit
    expected = [p for start in range(0, len(frame), 1000) for p in served(model, frame.iloc[start : start + 1000])]
    if model.task == "classification":
        assert result.columns == ("prediction", "proba_0", "proba_1")
        probs = np.array([[p[c] for c in model.class_names] for p in expected])
        np.testing.assert_allclose(out[["proba_0", "proba_1"]].to_numpy(), probs, atol=5e-7)  # served: 6 decimals
        assert (out["prediction"].to_numpy() == np.argmax(probs, axis=1)).all()
    else:
        assert result.columns == ("prediction",)
        np.testing.assert_array_equal(out["prediction"].to_numpy(), np.array(expected))


def test_csv_in_and_out_equal_parquet(box: Box, home: Path) -> None:
    frame = scoring_frame(800, seed=3)
    frame.to_parquet(home / "in.parquet")
    frame.to_csv(home / "in.csv", index=False)
    predict_file(box.registry, "churn:1", home / "in.parquet", home / "a.parquet", box=home, roots=[home])
    predict_file(box.registry, "churn:1", home / "in.csv", home / "b.csv", box=home, roots=[home], batch_rows=100)
    a, b = pd.read_parquet(home / "a.parquet"), pd.read_csv(home / "b.csv")
    np.testing.assert_allclose(a["proba_1"], b["proba_1"], atol=1e-6)
    assert (a["prediction"] == b["prediction"]).all()


def test_bad_input_is_a_clear_error_and_writes_nothing(box: Box, home: Path, tmp_path: Path) -> None:
    frame = scoring_frame(50)
    frame.to_parquet(home / "in.parquet")
    frame.drop(columns=["plan"]).to_parquet(home / "noplan.parquet")
    frame.assign(age=frame.age.astype(str)).to_parquet(home / "strage.parquet")
    frame.assign(prediction=1).to_parquet(home / "clash.parquet")
    (home / "exists.parquet").write_bytes(b"keep me")

    def run(ref: str = "churn:1", src: str = "in.parquet", out: Path | str = "out.parquet", **kw: Any) -> Any:
        return predict_file(box.registry, ref, home / src, home / out, box=home, roots=[home], **kw)

    for call, error, message in [
        (lambda: run(src="noplan.parquet"), ValidationError, "missing feature column.*plan"),
        (lambda: run(src="strage.parquet"), ValidationError, "'age' must be numeric"),
        (lambda: run(src="clash.parquet"), ValidationError, "already has column.*prediction"),
        (lambda: run(src="nope.parquet"), NotFound, "does not exist"),
        (lambda: run(ref="nomodel:1"), NotFound, "no model version"),
        (lambda: run(ref="churn:9"), NotFound, "no model version"),
        (lambda: run(out=tmp_path / "elsewhere" / ".." / "x.parquet"), UsageError, "outside the allowed places"),
        (lambda: run(out="features/x.parquet"), UsageError, "box's own files"),
        (lambda: run(out="meta.db"), UsageError, "unknown format"),
        (lambda: run(out="out.json"), UsageError, "unknown format"),
        (lambda: run(out="in.parquet", force=True), UsageError, "must not be the input"),
        (lambda: run(out="exists.parquet"), Conflict, "exists"),
    ]:
        with pytest.raises(error, match=message):
            call()
    assert not (home / "out.parquet").exists()
    assert (home / "exists.parquet").read_bytes() == b"keep me"
    assert not list(home.glob(".*mlbox-tmp"))
    run(out="exists.parquet", force=True)
    assert len(pd.read_parquet(home / "exists.parquet")) == 50


def test_cli_predict(cli_run: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scoring_frame(300).to_parquet(home / "in.parquet")
    monkeypatch.chdir(home)
    r = cli_run("--home", str(home), "--json", "predict", "churn:1", "--input", "in.parquet", "--out", "scored.parquet")
    assert r.exit_code == 0, r.stderr
    assert '"rows": 300' in r.stdout and "proba_1" in r.stdout
    assert len(pd.read_parquet(home / "scored.parquet")) == 300
    r = cli_run("--home", str(home), "predict", "churn:1", "-i", "in.parquet", "-o", "scored.parquet")
    assert r.exit_code == 4 and "exists" in r.stderr and r.stderr.strip().count("\n") == 0
    r = cli_run("--home", str(home), "predict", "nomodel", "-i", "in.parquet", "-o", "x.parquet")
    assert r.exit_code == 3 and "no model version" in r.stderr


def test_kill_9_mid_write_leaves_no_partial_output(home: Path, trained: Path) -> None:
    frame = scoring_frame(400_000, seed=5)
    frame.to_parquet(home / "big.parquet", row_group_size=2000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLBOX_")}
    env.update(MLBOX_HOME=str(home), OMP_NUM_THREADS="1")
    argv = [str(MLBOX_SCRIPT), "predict", "churn:1", "-i", "big.parquet", "-o", "scored.parquet", "--batch-rows", "500", "--threads", "1"]
    proc = subprocess.Popen(argv, cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        tmp = wait_for(lambda: next(iter(home.glob(".scored.parquet.*.mlbox-tmp")), None), 60, "the temporary output", 0.002)
        wait_for(lambda: tmp.stat().st_size > 100_000, 60, "the temporary output to grow", 0.002)
        assert proc.poll() is None, "finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert not (home / "scored.parquet").exists()
    assert tmp.exists()  # the leftover of the killed run, swept by the next one
    started = time.monotonic()
    done = subprocess.run(argv[:-4], cwd=home, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not tmp.exists() and not list(home.glob(".scored.parquet.*"))
    assert pq.read_metadata(home / "scored.parquet").num_rows == 400_000
    assert time.monotonic() - started < 120


def test_score_file_failure_mid_way_removes_its_temporary_file(box: Box, home: Path) -> None:
    frame = scoring_frame(3000)
    frame.loc[2500, "age"] = None  # row 2500 is null in a column that never was: the third batch fails
    pa.Table.from_pandas(frame.assign(age=frame.age.astype("Int64"))).to_pandas().to_parquet(home / "late.parquet")
    model = ModelCache(box.registry, 1).get("churn:1")
    with pytest.raises(ValidationError, match="row 2500: column 'age' may not be null"):
        score_file(model, home / "late.parquet", home / "out.parquet", batch_rows=1000)
    assert not (home / "out.parquet").exists() and not list(home.glob(".out.parquet.*"))


def test_batch_bench_quick_reports_both_rates() -> None:
    from mlbox.bench.batch import QUICK, batch_row, run_batch_bench

    stages: list[str] = []
    result = run_batch_bench(quick=True, on_stage=stages.append, threads=1)
    assert result["rows"] == QUICK.rows and result["rounds"] == QUICK.rounds == 3 and result["threads"] == 1
    assert result["mlbox_rows_per_s"] > 0 and result["floor_rows_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["floor_rows_per_s"] / result["mlbox_rows_per_s"])
    assert stages[-1] == "batch: round 3/3"
    row = batch_row(result)
    assert row.unit == "rows/s" and row.ratio == pytest.approx(result["ratio"]) and row.ok is None
