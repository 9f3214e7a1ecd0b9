"""`mlbox bench monitor`: a full drift check of a logged window against a plain numpy/scipy floor, in one run.

A fresh temporary box gets a synthetic table of 50 features (40 numeric of five families, two
of them with 2% nulls; 10 categorical with 5–20 levels). Two scikit-learn LogisticRegression
models are trained through `mlbox train` on 5,000 reference rows and deployed as the primary
and a 10% canary; each version gets a reference profile of `rows` reference rows. Then `rows`
single-row requests (a few columns shifted: 8 numeric by 0.2 sd, 3 categorical mixes by a
total variation of 0.10–0.20) are written through the real prediction-log writer, typed
columns included, in flushes of 100,000 records. None of that is timed.

Measured, in turns for `rounds` rounds, each in a fresh process so that its peak RSS is the
check's own: (a) `box.monitor.check` over the last 30 days — every test (PSI, KS, chi²,
Jensen–Shannon, Wasserstein) on every feature and output of each variant, read from Parquet;
(b) the floor: the same tests written plainly with numpy/scipy (`ks_2samp`, `chi2_contingency`,
`jensenshannon(base=2)`, `wasserstein_distance`, PSI on reference deciles) on the same values
held in memory as arrays, the reference's raw rows against each variant's raw rows. Heavy
imports are paid before the clock in both. Each figure is the median of its rounds.

The table is `monitor_data`, the floor `monitor_floor`, the reported rows `monitor_report`.
"""

from __future__ import annotations


import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlbox.bench.monitor_data import Synthetic, synthesize
from mlbox.bench.monitor_floor import floor_check
from mlbox.bench.monitor_report import PHASES, report
from mlbox.bench.report import Recorder, Row, settle
from mlbox.config import child_env, load_settings
from mlbox.security.osuser import effective_os_user

DEPLOYMENT = "bench"
CANARY_SHARE = 0.10
CHUNK = 100_000  # records per flush of the log writer: bounded memory while writing 1M records


@dataclass(frozen=True)
class MonitorScale:
    """How big a run is: rows on each side, measured rounds, training rows."""

    rows: int  # reference rows and logged rows alike
    rounds: int
    train_rows: int = 5_000


FULL = MonitorScale(1_000_000, 3)
QUICK = MonitorScale(100_000, 3)


@dataclass(frozen=True)
class Prepared:
    """The box holding the deployment, its log and profiles, and the floor's arrays on disk."""

    home: Path
    arrays: Path  # folder of .npy files the floor loads
    refs: tuple[str, str]  # primary, canary
    logged: int
    files: int


def _train_models(box: Any, data: Synthetic, work: Path, rows: int, actor: str) -> tuple[str, str]:
    from mlbox.train.runner import train
    from mlbox.train.spec import parse_spec

    csv = work / "train.csv"
    data.training_frame(rows).to_csv(csv, index=False)
    spec = {"experiment": "bench-monitor", "task": "classification", "target": "y", "flavor": "sklearn",
            "estimator": "sklearn.linear_model.LogisticRegression", "preprocess": True, "data": {"path": str(csv)},
            "split": {"method": "random", "test_size": 0.2, "valid_size": 0}, "device": "cpu"}  # fmt: skip
    refs = []
    for seed, params in ((1, {"max_iter": 300}), (2, {"max_iter": 300, "C": 0.05})):  # the canary: more regularised
        trained = train(parse_spec({**spec, "seed": seed, "params": params}, base_dir=work), store=None,
                        tracking=box.tracking, registry=box.registry, actor=actor, register=True)  # fmt: skip
        assert trained.version is not None
        refs.append(trained.version.ref)
    return refs[0], refs[1]


def _scorer(box: Any, ref: str, work: Path) -> Callable[[np.ndarray], np.ndarray]:
    """P(class 1) of `ref` through its exported ONNX model, as `mlbox serve` computes it."""
    import onnxruntime as ort

    onnx = box.registry.export(ref, "onnx", work / f"{ref.replace(':', '-')}.onnx")[0]
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def score(X: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(None, {name: X[i : i + CHUNK]})[0][:, 1] for i in range(0, len(X), CHUNK)])

    return score


def _records(data: Synthetic, start: int, stop: int, variant: np.ndarray, p1: np.ndarray, refs: tuple[str, str],
             t0: float, step: float) -> list[Any]:  # fmt: skip
    """Records `start:stop` of the window: one single-row request each, as a client sends them."""
    import orjson

    from mlbox.serve.predlog.wire import Record

    rows = data.current_rows(start, stop)
    out = []
    for i, row in enumerate(rows, start):
        canary = bool(variant[i])
        p = float(p1[i])
        out.append(Record(ts=t0 + i * step, request_id=uuid.uuid4().hex, deployment=DEPLOYMENT,
                          model=refs[1] if canary else refs[0], variant="canary" if canary else "primary", shadow=False,
                          latency_ms=1.0 + (i % 7) * 0.1, entity=None, inputs=orjson.dumps([row]).decode(),
                          outputs=orjson.dumps([{"0": 1.0 - p, "1": p}]).decode(), error=None))  # fmt: skip
    return out


def prepare(work: Path, scale: MonitorScale, stage: Callable[[str], None]) -> Prepared:
    """Box, two models, a deployment with a canary, profiles, the logged window and the floor's arrays."""
    from mlbox import clock
    from mlbox.box import Box
    from mlbox.flavors.signature import Signature
    from mlbox.flavors.profile import build_profile
    from mlbox.serve.predlog.writer import PredictionLog

    me = effective_os_user()
    stage(f"generating {scale.rows:,} reference and {scale.rows:,} current rows")
    data = synthesize(scale.rows, seed=11)
    ref_X, cur_X = data.reference.encoded(), data.current.encoded()
    box = Box.create(load_settings(work / "box", environ={}), me)
    try:
        stage("training the primary and canary models")
        refs = _train_models(box, data, work, scale.train_rows, me)
        box.deployments.create(DEPLOYMENT, refs[0], me)
        box.deployments.canary(DEPLOYMENT, refs[1], CANARY_SHARE * 100, me)
        signatures = {ref: Signature.from_dict(box.registry.get(ref).signature) for ref in refs}
        for ref, sig in signatures.items():
            if list(sig.names) != data.names:
                raise RuntimeError(f"{ref} was trained on columns {sig.names}, not the benchmark's")
        scorers = [_scorer(box, ref, work) for ref in refs]

        stage("reference profiles")
        ref_p = [score(ref_X) for score in scorers]
        for ref, p in zip(refs, ref_p, strict=True):
            probabilities = np.column_stack([1.0 - p, p])
            box.monitor.save_profile(ref, build_profile(ref_X, signatures[ref], task="classification",
                                                        predictions=probabilities), me)  # fmt: skip

        rng = np.random.default_rng(5)
        variant = rng.random(scale.rows) < CANARY_SHARE  # True: canary
        cur_p = np.where(variant, scorers[1](cur_X), scorers[0](cur_X))
        log = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600, max_rows=scale.rows + 1,
                            signature_of=signatures.get)  # fmt: skip
        week = 7 * 86400.0
        t0, step = clock.now().timestamp() - week, week / scale.rows  # the last 7 days, in order
        try:
            for start in range(0, scale.rows, CHUNK):
                stop = min(scale.rows, start + CHUNK)
                stage(f"writing the prediction log: {start:,}/{scale.rows:,} records")
                log.extend(_records(data, start, stop, variant, cur_p, refs, t0, step))
                log.flush()
        finally:
            log.close()
        if log.dropped or log.written != scale.rows:
            raise RuntimeError(f"the log writer wrote {log.written} of {scale.rows} records ({log.dropped} dropped)")
        files = int(box.db.scalar("SELECT count(*) FROM prediction_batches WHERE deployment = ?", (DEPLOYMENT,)))
    finally:
        box.close()

    stage("saving the floor's arrays")
    arrays = work / "arrays"
    arrays.mkdir()
    np.save(arrays / "ref_X.npy", ref_X)
    np.save(arrays / "cur_X.npy", cur_X)  # what the typed log columns hold: the float32 the model saw
    np.save(arrays / "ref_p.npy", np.column_stack(ref_p).astype(np.float32))
    np.save(arrays / "cur_p.npy", cur_p.astype(np.float32))
    np.save(arrays / "variant.npy", variant)
    (arrays / "kinds.json").write_text(json.dumps({"names": data.names, "levels": data.level_counts}))
    return Prepared(home=work / "box", arrays=arrays, refs=refs, logged=log.written, files=files)


def _reset_peak() -> None:
    """Start the peak-RSS count afresh (Linux: the mm's high-water mark back to the current RSS)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_bytes() -> int:
    """The process's peak RSS since `_reset_peak`.

    VmHWM, not `ru_maxrss`: Linux carries `ru_maxrss` over fork and exec, so a child of a large
    parent would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _preload() -> None:
    """What both sides import before their clock starts."""
    import duckdb  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import scipy.spatial.distance  # noqa: F401
    import scipy.stats  # noqa: F401


def _time_phases(module: Any) -> dict[str, float]:
    """Seconds spent in each of PHASES' functions as `module` calls them (those it has), summed over calls.

    Only ever done in the measuring child process, which exits after its one check.
    """
    spent: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start

        return call

    for name in PHASES:
        if callable(getattr(module, name, None)):
            setattr(module, name, timed(name, getattr(module, name)))
    return spent


def measure_mlbox(home: Path) -> dict[str, Any]:
    """One full check through `box.monitor.check`, timed, with where its time went; what the child process prints."""
    import mlbox.monitor.service
    from mlbox.box import Box
    from mlbox.monitor.window import Window

    _preload()
    phases = _time_phases(mlbox.monitor.service)
    with Box(load_settings(home, environ={})) as box:
        service = box.monitor  # its modules imported before the clock, as the floor's are
        before = _peak_bytes()
        _reset_peak()
        start = time.perf_counter()
        result = service.check(DEPLOYMENT, Window.parse(last="30d"))
        seconds = time.perf_counter() - start
        peak = _peak_bytes()
    found = result.as_dict()
    variants = {
        name: {"rows": v["rows"], "drifted": v["drifted"], "share": v["share"],
               "features": {f: _tests(d) for f, d in v["features"].items()},
               "outputs": {f: _tests(d) for f, d in v["outputs"].items()}}
        for name, v in found["variants"].items()
    }  # fmt: skip
    return {"seconds": seconds, "peak_bytes": peak, "before_bytes": before, "variants": variants, "phases": phases}


def _tests(drift: dict[str, Any]) -> dict[str, Any]:
    tests = drift.get("tests") or {}
    return {"drifted": bool(drift["drifted"]), "status": drift["status"],
            **{f"{name}.{key}": value for name, fields in tests.items() for key, value in (fields or {}).items()}}  # fmt: skip


def measure_floor(arrays: Path) -> dict[str, Any]:
    """The floor on the arrays in memory, timed; what the child process prints."""
    _preload()
    kinds = json.loads((arrays / "kinds.json").read_text())
    loaded = {name: np.load(arrays / f"{name}.npy") for name in ("ref_X", "cur_X", "ref_p", "cur_p", "variant")}
    before = _peak_bytes()
    _reset_peak()
    start = time.perf_counter()
    variants = floor_check(loaded, kinds["names"], kinds["levels"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_bytes": _peak_bytes(), "before_bytes": before, "variants": variants}


def _child(which: str, path: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "mlbox.bench.monitor", which, str(path)], env=child_env(drop=("MLBOX_HOME",)),
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the {which} check failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(scale: MonitorScale = FULL, on_row: Callable[[Row], None] | None = None,
        on_stage: Callable[[str], None] | None = None) -> list[Row]:  # fmt: skip
    """Run the benchmark; returns its rows (also passed to `on_row` as they are measured)."""
    rec = Recorder(on_row, on_stage)
    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-monitor-"))
    try:
        ready = prepare(work, scale, rec.stage)
        runs: dict[str, list[dict[str, Any]]] = {"mlbox": [], "floor": []}
        for i in range(scale.rounds):
            for which in ("mlbox", "floor") if i % 2 == 0 else ("floor", "mlbox"):  # neither always runs first
                what = "box.monitor.check" if which == "mlbox" else "the numpy/scipy floor"
                rec.stage(f"round {i + 1}/{scale.rounds}: {what}")
                settle()
                runs[which].append(_child(which, ready.home if which == "mlbox" else ready.arrays))
        report(rec, runs, rows=scale.rows, rounds=scale.rounds, full=scale.rows >= FULL.rows, logged=ready.logged,
               files=ready.files)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("mlbox", "floor"):
        sys.stderr.write("usage: python -m mlbox.bench.monitor mlbox BOX_HOME | floor ARRAYS_DIR\n")
        return 2
    which, path = argv[0], Path(argv[1])
    result = measure_mlbox(path) if which == "mlbox" else measure_floor(path)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
