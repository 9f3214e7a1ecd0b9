"""Starting and stopping an HTTP server process on a free loopback port (quickstart, benchmarks, tests)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from mlbox.errors import MlboxError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    cmd: list[str], env: dict[str, str], port: int, log: Path | None = None, timeout: float = 120, *, cafile: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own process group and wait until GET /readyz answers 200.

    With `cafile` the server speaks HTTPS and is trusted through that certificate (or CA bundle)
    alone, host name checked: it must cover 127.0.0.1, as `mlbox auth selfsigned` certificates do.
    """
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    url = f"{'https' if cafile else 'http'}://127.0.0.1:{port}/readyz"
    out = log.open("wb") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:]) if log else ""
            raise MlboxError(f"{' '.join(cmd[:4])} exited with {proc.returncode}" + (f": {tail}" if tail else ""))
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                if r.status == 200:
                    return proc
        except OSError as exc:
            reason = getattr(exc, "reason", exc)  # urllib wraps the TLS error in a URLError
            if isinstance(reason, ssl.SSLCertVerificationError):  # waiting longer cannot fix a certificate
                stop(proc)
                raise MlboxError(f"the server's certificate is not trusted through {cafile}: {reason.verify_message}") from None
        if time.time() > deadline:
            stop(proc)
            raise MlboxError(f"{' '.join(cmd[:4])} was not ready after {timeout:.0f} s")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM the process group (servers flush their logs), then SIGKILL anything left of it.

    BentoML starts its workers in sessions of their own, so the group alone can miss them:
    the descendants are collected first and killed too.
    """
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
    for child in descendants:
        try:
            child.wait(5)
        except psutil.TimeoutExpired:
            child.kill()
        except psutil.NoSuchProcess:
            pass
