"""Fixtures of the job-queue tests: a real box in tmp_path, the real `mlbox` CLI and worker processes.

The root tests/conftest.py gives every test a clean environment: no MLBOX_* variables, the OS
user `OS_USER` (the kernel's, the box's admin here), HOME inside tmp_path and a PATH holding only an empty folder,
so `nvidia-smi` is absent unless a test writes a fake one there. Command jobs therefore name the
interpreter by its absolute path (`PY`). GPUs are simulated only: GpuState lists, an
`inventory=` callable, or a fake `nvidia-smi`.

Every process a test starts goes through `Procs`, which kills its process group at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mlbox.box import Box
from mlbox.config import load_settings

from ..conftest import MLBOX_SCRIPT, OS_USER, wait_for

PY = sys.executable


def py(code: str) -> list[str]:
    """argv of a command job running `code` (PATH holds no python)."""
    return [PY, "-c", code]




def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) pids of process group `pgid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return out


class Procs:
    """Processes started by one test; each in its own session, its group killed at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []
        self.extra_pids: list[int] = []

    def popen(self, argv: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
        out = log.open("w")
        proc = subprocess.Popen(
            list(argv), env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True, cwd=log.parent,
        )  # fmt: skip
        out.close()
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.extra_pids:  # e.g. a job process that outlived its worker (a bug the tests report)
            for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    kill()
                except (ProcessLookupError, PermissionError):
                    pass


class JobBox:
    """A real box at `home` plus helpers to drive it through the real `mlbox` command."""

    def __init__(self, home: Path, box: Box, procs: Procs, tmp: Path) -> None:
        self.home = home
        self.box = box
        self.procs = procs
        self.tmp = tmp

    @property
    def queue(self):  # type: ignore[no-untyped-def]
        return self.box.jobs

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "MLBOX_TOKEN"}
        env["MLBOX_HOME"] = str(self.home)
        env.update(extra)
        return env

    def mlbox(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(MLBOX_SCRIPT), *args], cwd=self.tmp, env=self.env(**env), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def submit(self, *args: str, **env: str) -> int:
        """`mlbox --json jobs submit ARGS`; the new job's id."""
        r = self.mlbox("--json", "jobs", "submit", *args, **env)
        assert r.returncode == 0, r.stderr + r.stdout
        return int(json.loads(r.stdout)["id"])

    def submit_command(self, code: str, *options: str) -> int:
        return self.submit("command", *options, "--", *py(code))

    def worker_once(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        r = self.mlbox("worker", "--once", *args, timeout=timeout)
        assert r.returncode == 0, r.stderr + r.stdout
        return r

    def start_worker(self, *args: str, name: str = "worker") -> subprocess.Popen[str]:
        """A long-running `mlbox worker` in its own session (output in tmp/NAME.log)."""
        return self.procs.popen([str(MLBOX_SCRIPT), "worker", *args], self.env(), self.tmp / f"{name}.log")

    def job(self, job_id: int):  # type: ignore[no-untyped-def]
        return self.box.jobs.get(job_id)

    def wait_status(self, job_id: int, statuses: Sequence[str] | str, timeout: float = 30):  # type: ignore[no-untyped-def]
        wanted = (statuses,) if isinstance(statuses, str) else tuple(statuses)
        wait_for(lambda: self.job(job_id).status in wanted, timeout, f"job {job_id} to be {wanted}")
        return self.job(job_id)

    def log(self, job_id: int) -> str:
        path = self.home / "logs" / "jobs" / f"{job_id}.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def jbox(tmp_path: Path, procs: Procs) -> Iterator[JobBox]:
    """A fresh box in tmp_path whose admin is the OS user (`OS_USER`)."""
    home = tmp_path / "box"
    box = Box.create(load_settings(home, environ={}), OS_USER)
    work = tmp_path / "work"
    work.mkdir()
    try:
        yield JobBox(home, box, procs, work)
    finally:
        box.close()
