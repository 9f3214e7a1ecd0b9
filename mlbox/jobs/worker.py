"""`mlbox worker`: lease jobs, run each as an isolated process on its GPUs or the CPU, report back.

Each job runs as `python -m mlbox jobs exec ID` in its own process group and working
directory, with `CUDA_VISIBLE_DEVICES` set to its GPUs (empty for CPU), memory and CPU-time
limits, its own log file, and a timeout. The job dies with its worker (PR_SET_PDEATHSIG),
so a job recovered from a dead worker never runs twice. Cancel stops the whole group.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlbox.config import child_env
from mlbox.hardware import Gpu, Inventory, detect
from mlbox.jobs.placement import GpuState
from mlbox.jobs.queue import WORKER_ACTOR, Job, JobQueue

PR_SET_PDEATHSIG = 1


@dataclass
class Running:
    """A job this worker has started: its process, start time and devices."""
    job: Job
    proc: subprocess.Popen[bytes]
    started: float
    devices: tuple[int, ...]


def die_with_parent() -> None:
    """In a child before exec: the kernel sends it SIGKILL when its parent dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _limits(memory_mb: int, cpu_seconds: int) -> Callable[[], None]:
    def apply() -> None:
        die_with_parent()
        if memory_mb > 0:
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 1024 * 1024, memory_mb * 1024 * 1024))
        if cpu_seconds > 0:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))

    return apply


def parse_gpus(text: str, inventory: Inventory) -> list[Gpu]:
    """`auto` (every visible GPU), `none`, or indices like `0,1`."""
    if text == "none":
        return []
    if text == "auto":
        return list(inventory.gpus)
    wanted = {int(i) for i in text.split(",") if i.strip()}
    return [g for g in inventory.gpus if g.index in wanted]


class Worker:
    """`mlbox worker`: leases jobs, places them on GPUs or the CPU, runs each as an isolated process group."""

    def __init__(
        self,
        queue: JobQueue,
        home: Path,
        *,
        gpus: str = "auto",
        slots: int = 1,
        lease_s: float = 30.0,
        poll_s: float = 1.0,
        inventory: Callable[[], Inventory] = detect,
        log: Callable[[str], None] = lambda _m: None,
        on_tick: Callable[[], list[int]] | None = None,
        actor: str = WORKER_ACTOR,
    ) -> None:
        self.queue = queue
        self.home = home
        self.gpu_spec = gpus
        self.slots = slots
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.inventory = inventory
        self.log = log
        self.on_tick = on_tick  # queues scheduled jobs (monitoring's schedules) before each claim
        self.actor = actor  # who the audit names for this worker's starts, ends and recoveries
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.running: dict[int, Running] = {}
        self._stop = False

    def gpu_states(self) -> Sequence[GpuState]:
        return [GpuState(g.index, g.memory_total_mb, g.memory_free_mb) for g in parse_gpus(self.gpu_spec, self.inventory())]

    def start_job(self, job: Job, devices: tuple[int, ...]) -> None:
        workdir = self.home / "jobs" / str(job.id)
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.home / "logs" / "jobs" / f"{job.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = child_env(
            drop=("MLBOX_TOKEN",),
            MLBOX_HOME=str(self.home),
            CUDA_DEVICE_ORDER="PCI_BUS_ID",  # CUDA numbers GPUs as nvidia-smi does, not fastest first
            CUDA_VISIBLE_DEVICES=",".join(str(d) for d in devices),
            OMP_NUM_THREADS=str(max(1, int(job.cpus))),
            BENTOML_DO_NOT_TRACK="True",
            PYTHONUNBUFFERED="1",
        )
        with log_path.open("ab") as out:
            out.write(f"--- job {job.id} attempt {job.attempts} on {self.name}, devices {list(devices) or 'cpu'}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlbox", "jobs", "exec", str(job.id)],
                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_limits(job.memory_mb, job.timeout_s * max(1, int(job.cpus)) + 60),
            )  # fmt: skip
        self.queue.started(job.id, proc.pid, str(log_path))
        self.running[job.id] = Running(job, proc, time.monotonic(), devices)
        self.log(f"job {job.id} ({job.type}) started, pid {proc.pid}, devices {list(devices) or 'cpu'}")

    def _kill(self, run: Running) -> None:
        """SIGTERM the job's process group, then SIGKILL whatever is left of it (children may ignore TERM)."""
        try:
            os.killpg(run.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            run.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(run.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if run.proc.poll() is None:
            run.proc.wait(10)

    def tick(self) -> None:
        """One round: reap, heartbeat, cancel, time out, recover, claim."""
        for job_id, run in list(self.running.items()):
            code = run.proc.poll()
            if code is not None:
                status = "succeeded" if code == 0 else "failed"
                self.queue.finish(job_id, status, code, None if code == 0 else f"exited with {code}", worker=self.name, actor=self.actor)
                del self.running[job_id]
                self.log(f"job {job_id} {status} (exit {code})")
        cancel, lost = self.queue.heartbeat(self.name, list(self.running), self.lease_s)
        for job_id, run in list(self.running.items()):
            if job_id in lost:  # our lease expired and the job was recovered: another attempt owns it now
                self._kill(run)
                del self.running[job_id]
                self.log(f"job {job_id} lost its lease; stopped here")
            elif job_id in cancel:
                self._kill(run)
                self.queue.finish(job_id, "cancelled", run.proc.returncode, "cancelled", worker=self.name, actor=self.actor)
                del self.running[job_id]
                self.log(f"job {job_id} cancelled")
            elif time.monotonic() - run.started > run.job.timeout_s:
                self._kill(run)
                self.queue.finish(job_id, "timed_out", run.proc.returncode, f"ran over its {run.job.timeout_s}s timeout",
                                  worker=self.name, actor=self.actor)  # fmt: skip
                del self.running[job_id]
                self.log(f"job {job_id} timed out")
        for job_id in self.queue.recover(actor=self.actor):
            self.log(f"job {job_id} recovered from a dead worker")
        if self.on_tick is not None:
            try:
                for job_id in self.on_tick():
                    self.log(f"job {job_id} queued by a schedule")
            except Exception as exc:  # a broken schedule must not stop the worker from running jobs
                self.log(f"scheduling failed: {exc}")
        for job, placement in self.queue.claim(self.name, self.gpu_states(), self.slots - len(self.running), self.lease_s, actor=self.actor):
            self.start_job(job, placement.devices)

    def run(self, once: bool = False) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        while not self._stop:
            self.tick()
            if once and not self.running:
                break
            time.sleep(self.poll_s)
        for job_id, run in list(self.running.items()):  # a stopping worker hands its jobs back
            self._kill(run)
            self.queue.release(job_id, "its worker stopped", worker=self.name, actor=self.actor)

    def stop(self) -> None:
        self._stop = True
