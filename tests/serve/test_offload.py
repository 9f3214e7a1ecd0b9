"""The sidecar that runs the prediction log and the shadow off the worker: the wire format, a real sidecar
process on a real box, and what happens when either side dies (kill -9).

Each test drives `Offload` (the worker's side) directly, with the command a worker uses; the
sidecar writes real Parquet batches and catalog rows into a private copy of the session box.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlbox.api.context import sidecar_env
from mlbox.flavors import onnx as onnx_files
from mlbox.flavors.signature import Signature
from mlbox.serve.predlog.wire import Record, encode_frame, read_frames
from mlbox.serve.predlog.worker import Offload

from .conftest import Template, copy_box, meta_rows, open_box, wait_for


def record(i: int, deployment: str = "d", variant: str = "primary") -> Record:
    return Record(1_700_000_000.0 + i, f"req-{i}", deployment, "churn:1", variant, False, 0.5, None, f'[{{"x0": {i}}}]', '[{"0": 1.0}]', None)


def command(home: Path, flush_seconds: float = 0.2) -> list[str]:
    return [sys.executable, "-m", "mlbox.serve.predlog.sidecar", str(home), "1", str(flush_seconds), "200000"]


def logged_rows(home: Path) -> int:
    return int(meta_rows(home, "SELECT coalesce(sum(rows), 0) AS n FROM prediction_batches")[0]["n"])


def log_frame(home: Path) -> pd.DataFrame:
    files = sorted((home / "predictions").rglob("*.parquet"))
    return pd.concat([pq.read_table(p).to_pandas() for p in files], ignore_index=True)


@pytest.fixture
def home(serve_template: Template, tmp_path: Path) -> Path:
    return copy_box(serve_template, tmp_path / "box")


# the wire format ------------------------------------------------------------------------------


def test_frames_carry_records_and_their_shadows_exactly() -> None:
    records = [record(1), Record(2.0, "r2", "d", "m:1", "canary", False, 1.25, '{"k": "é"}', "[]", None, "boom")]
    shadows = [(0, "churn_bc:1"), (1, "churn:2")]
    frames = list(read_frames(io.BytesIO(encode_frame(records, shadows) + encode_frame([record(3)], []))))
    assert frames == [(records, shadows), ([record(3)], [])]
    assert all(type(r) is Record for r in frames[0][0])


def test_a_frame_cut_short_by_a_dying_writer_is_dropped_whole() -> None:
    whole = encode_frame([record(1)], [])
    cut = encode_frame([record(2), record(3)], [(0, "m:1")])[:-5]
    assert [records for records, _ in read_frames(io.BytesIO(whole + cut))] == [[record(1)]]
    assert list(read_frames(io.BytesIO(whole[:3]))) == []


# a real sidecar -------------------------------------------------------------------------------

ROW = {"x0": 0.5, "x1": -0.2, "x2": 1.1, "x3": 0.0, "x4": 2.0, "customer_id": 7, "segment": "b"}


def answered(i: int, model: str, outputs: list[dict[str, float]], deployment: str = "d") -> Record:
    return Record(1.7e9 + i, f"req-{i}", deployment, model, "primary", False, 0.3, None, orjson.dumps([ROW]).decode(),
                  orjson.dumps(outputs).decode(), None)  # fmt: skip


def test_records_and_shadow_predictions_reach_parquet_and_counters(home: Path, tmp_path: Path) -> None:
    with open_box(home) as box:  # what churn:1 really answers: as its own shadow it agrees exactly when we say so
        path = box.registry.export("churn:1", "onnx", tmp_path / "churn1.onnx")[0]
        sig = Signature.from_dict(box.registry.get("churn:1").signature)
    truth = onnx_files.run(onnx_files.session(path, 1), sig.encode(pd.DataFrame([ROW])))[0]
    agreeing = [{"0": float(truth[0]), "1": float(truth[1])}]
    disagreeing = [{"0": float(truth[1]), "1": float(truth[0])}]  # the other class wins
    off = Offload(command(home), env=sidecar_env())
    off.start()
    try:
        for i in range(30):
            off.append(record(100 + i))  # no shadow
        for i in range(20):
            off.append(answered(i, "churn:2", agreeing if i < 15 else disagreeing), "churn:1")
        for i in range(10):  # churn_bc:1 has other levels: it encodes the logged rows with its own signature
            off.append(answered(50 + i, "churn:1", agreeing, "e"), "churn_bc:1")
        wait_for(lambda: off.shadow_counts().get("d", {}).get("predictions") == 20, 30, "the shadow predictions")
        wait_for(lambda: off.shadow_counts().get("e", {}).get("predictions") == 10, 30, "the other shadow's")
        wait_for(lambda: off.counter("written") == 90, 30, "the records written")
    finally:
        off.close()
    assert logged_rows(home) == 90
    assert off.shadow_counts()["d"] == {"predictions": 20, "disagreements": 5, "errors": 0}
    assert off.shadow_counts()["e"]["errors"] == 0
    frame = log_frame(home)
    shadow = frame[frame["variant"] == "shadow"]
    assert len(shadow) == 30 and shadow["shadow"].all()
    assert dict(shadow["model"].value_counts()) == {"churn:1": 20, "churn_bc:1": 10}
    for outputs in shadow[shadow["model"] == "churn:1"]["outputs"]:
        np.testing.assert_allclose([orjson.loads(outputs)[0]["0"]], [truth[0]], atol=1e-6)
    assert not off.alive and off.dropped == 0


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="a kernel without autogroup scheduling")
def test_the_sidecar_runs_below_its_worker_in_its_own_session_too(home: Path) -> None:
    """Its own session is its own autogroup, where a process's nice weighs nothing against the worker's group: the
    group's nice is lowered as well, and the sidecar runs SCHED_IDLE, so a waking worker preempts it at once."""
    off = Offload(command(home), env=sidecar_env())
    off.start()
    try:
        off.append(record(1))
        wait_for(lambda: off.counter("written") == 1, 30, "the record")  # past main(): its priority is set
        assert off._proc is not None
        pid = off._proc.pid
        assert os.getsid(pid) != os.getsid(0)  # a session (and so an autogroup) of its own
        group = Path(f"/proc/{pid}/autogroup").read_text().split()
        assert group[-2:] == ["nice", "19"], group
        # its own group, not ours; the kernel prints nothing for the root group (a container's init session)
        ours = Path("/proc/self/autogroup").read_text().split() or ["(the root group)"]
        assert group[0] != ours[0]
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    finally:
        off.close()


def test_background_priority_tolerates_a_kernel_without_autogroup_and_retries_a_busy_one(tmp_path: Path) -> None:
    from mlbox.serve.predlog import sidecar

    script = f"""
import os, sys
from pathlib import Path
from mlbox.serve.predlog import sidecar
print(sidecar.background(Path({str(tmp_path / "none")!r})))
print(os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0) == os.SCHED_IDLE)
"""
    run = [sys.executable, "-c", script]
    out = subprocess.run(run, capture_output=True, text=True, check=True, start_new_session=True).stdout.splitlines()
    assert out[0].startswith("['autogroup: ") and "No such file" in out[0]  # said, not raised
    assert out[1] == "19 True"  # the rest is set all the same
    led = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "not a session leader" in led[0]  # run in the caller's session (by hand): the caller's group is left alone
    writes: list[str] = []

    class Busy:  # the kernel takes one unprivileged autogroup change per 100 ms, machine-wide: EAGAIN meanwhile
        def __truediv__(self, name: str) -> Busy:
            return self

        def write_text(self, text: str) -> None:
            writes.append(text)
            if len(writes) < 3:
                raise BlockingIOError(11, "Resource temporarily unavailable")

    assert sidecar.AUTOGROUP_TRIES >= 3
    pid = os.fork()
    if pid == 0:  # lowering a priority is for good: done in a child
        os.setsid()  # leading a session of its own, as the sidecar does
        os._exit(0 if sidecar.background(Busy()) == [] and writes == ["19\n"] * 3 else 1)  # type: ignore[arg-type]
    assert os.waitpid(pid, 0)[1] == 0


def test_an_unknown_shadow_model_is_counted_not_fatal(home: Path) -> None:
    off = Offload(command(home), env=sidecar_env())
    off.start()
    try:
        off.append(answered(1, "churn:1", [{"0": 0.5, "1": 0.5}]), "ghost:1")
        off.append(record(2))
        wait_for(lambda: off.shadow_counts().get("d", {}).get("errors") == 1, 30, "the shadow error")
        wait_for(lambda: off.counter("written") == 2, 30, "the records")
        assert off.alive
    finally:
        off.close()


def test_a_killed_sidecar_is_started_again_and_what_it_had_not_written_is_sent_again(home: Path) -> None:
    off = Offload(command(home, flush_seconds=3600), env=sidecar_env())  # it writes nothing until it exits
    off.start()
    try:
        for i in range(10):
            off.append(record(i))
        wait_for(lambda: off.remote.get("received") == 10, 30, "the sidecar to hold the first records")
        assert off._proc is not None
        first = off._proc.pid
        os.kill(first, signal.SIGKILL)
        for i in range(10, 30):
            off.append(record(i))
        wait_for(lambda: off.alive and off._proc is not None and off._proc.pid != first, 30, "a new sidecar")
        wait_for(lambda: off.remote.get("received") == 30, 30, "the new sidecar to hold all the records")
        assert off.restarts == 1 and off.dropped == 0
    finally:
        off.close()
    assert logged_rows(home) == 30
    assert off.acknowledged == 30 and off.backlog == 0


WORKER = """
import sys, time, os, signal
from mlbox.api.context import sidecar_env
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.worker import Offload
off = Offload({command!r}, env=sidecar_env())
off.start()
for i in range(40):
    off.append(Record(1.7e9 + i, f"req-{{i}}", "d", "churn:1", "primary", False, 0.5, None, "[]", "[]", None))
time.sleep(0.5)  # shipped (every 50 ms), not yet flushed (every hour)
print(off._proc.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_of_the_worker_still_writes_what_the_sidecar_received(home: Path) -> None:
    script = WORKER.format(command=command(home, flush_seconds=3600))
    proc = subprocess.run([sys.executable, "-c", script], env=sidecar_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    sidecar = int(proc.stdout.split()[0])
    wait_for(lambda: logged_rows(home) == 40, 30, "the sidecar's final flush")
    wait_for(lambda: not _running(sidecar), 10, "the sidecar to exit")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie (exited, not yet reaped by init) is not running
        return fh.read().split()[2] != "Z"


def test_without_a_sidecar_memory_stays_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    off = Offload([sys.executable, "-c", "pass"], max_rows=100, interval=0.01)
    off.start()
    try:
        for i in range(1000):
            off.append(record(i))
            if i % 100 == 0:
                time.sleep(0.02)
        time.sleep(0.1)
        assert off.backlog <= 100 + 100  # buffered here plus at most one frame beyond the bound
        assert off.dropped + off.backlog + off.acknowledged == 1000  # every record is accounted for
        assert off.dropped >= 700
    finally:
        off.close(timeout=5)
