"""Shared fixtures: a clean environment per test, a real box in tmp_path, and CLI runners.

Every test runs with no MLBOX_* variables, HOME inside tmp_path (so ~/.mlbox is never the
real one) and a PATH holding only an empty folder, so `nvidia-smi` is absent unless a test
puts a fake one there. The OS user is the kernel's (`OS_USER`, the effective uid's name);
LOGNAME, USER, LNAME and USERNAME all name someone else (`SPOOFED_USER`), so every test
also proves that mlbox ignores them.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mlbox.box import Box
from mlbox.config import load_settings

REPO = Path(__file__).resolve().parent.parent
MLBOX_SCRIPT = Path(sys.executable).with_name("mlbox")
OS_USER = pwd.getpwuid(os.geteuid()).pw_name  # who mlbox acts as: the effective uid, as the kernel says
SPOOFED_USER = "mallory" if OS_USER != "mallory" else "mallory2"  # what the environment claims

FAKE_SMI_H100 = "0, NVIDIA H100 80GB HBM3, 81559, 0, 0, GPU-abc"


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No MLBOX_* variables, a private HOME, the login variables lying about the OS user, no nvidia-smi on PATH."""
    for var in list(os.environ):
        if var.startswith("MLBOX_") or var in ("FORCE_COLOR", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(var)
    home = tmp_path / "_home"
    home.mkdir()
    bin_dir = tmp_path / "_bin"
    bin_dir.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(var, SPOOFED_USER)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("NO_COLOR", "1")
    return bin_dir


@pytest.fixture
def bin_dir(clean_env: Path) -> Path:
    """The one folder on PATH; put fake tools here."""
    return clean_env


def write_fake_nvidia_smi(bin_dir: Path, stdout: str = FAKE_SMI_H100, rc: int = 0) -> Path:
    script = bin_dir / "nvidia-smi"
    # only shell builtins: PATH holds nothing but this folder
    lines = " ".join(shlex.quote(line) for line in stdout.splitlines())
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' {lines}\nexit {rc}\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def kernel_user(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """`kernel_user("bob")`: in this process, the kernel now says the effective OS user is bob.

    Tests cannot switch uid, so a second OS user is simulated at the one boundary mlbox asks
    (`mlbox.security.osuser.effective_os_user`); subprocesses still run as `OS_USER`.
    """
    from mlbox.security import osuser

    def become(name: str) -> None:
        monkeypatch.setattr(osuser, "effective_os_user", lambda: name)

    return become


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "box"


@pytest.fixture
def box(home: Path) -> Iterator[Box]:
    """A fresh box whose admin is the OS user (`OS_USER`)."""
    b = Box.create(load_settings(home), OS_USER)
    try:
        yield b
    finally:
        b.close()


def raw_connect(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, as someone editing meta.db by hand would open it."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


@dataclass
class Completed:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None

    def json(self) -> object:
        return json.loads(self.stdout)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Invoke `mlbox.cli.main.app` through typer's CliRunner: `cli(*args, env={...}) -> Completed`.

    A command that fails raises MlboxError out of `app`; it is kept in `.exception`
    (the one-red-line rendering is `main.run`'s job, tested through `cli_run`).
    """
    from mlbox.cli.main import app

    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Completed:
        result = runner.invoke(app, list(args), env=env)
        exc = result.exception if result.exception and not isinstance(result.exception, SystemExit) else None
        return Completed(result.exit_code, result.stdout, result.stderr, exc)

    return invoke


@pytest.fixture
def cli_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Invoke the console-script entry point `mlbox.cli.main.run` in-process, as `mlbox ARGS` would."""
    from mlbox.cli import main

    def invoke(*args: str, env: dict[str, str] | None = None) -> Completed:
        capsys.readouterr()
        with monkeypatch.context() as m:
            m.setattr(sys, "argv", ["mlbox", *args])
            for key, value in (env or {}).items():
                m.setenv(key, value)
            code: int | str | None = 0
            try:
                main.run()
            except SystemExit as exc:
                code = exc.code
        out = capsys.readouterr()
        return Completed(code if isinstance(code, int) else 1, out.out, out.err)

    return invoke


def run_mlbox(
    args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real `mlbox` console script in a subprocess with the current (clean) environment."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(MLBOX_SCRIPT), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def run_python(code: str, *, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
    )


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
