"""No egress: the whole quickstart (init, features apply/ingest, train, deploy, `mlbox serve` over TLS on loopback with
predictions, drift, A/B) and then `mlbox package` (a real `bentoml build`) run in real subprocesses with a
`sys.addaudithook` loaded by `sitecustomize.py` from PYTHONPATH into every Python process, children included (the
server, its workers, the sidecar, bentoml build). Every `socket.connect`, `socket.getaddrinfo` and `socket.sendto`
to an address that is not loopback is written to a file; the test fails on any."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import MLBOX_SCRIPT

HOOK = r'''
"""Loaded into every Python process of the test: record socket egress that does not stay on this machine."""
import ipaddress
import json
import os
import sys

_LOG = os.environ.get("EGRESS_AUDIT_LOG")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%")[0]
    if host in _LOCAL_NAMES or host == "":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name that is not localhost: resolving it may ask a DNS server
    return addr.is_loopback or addr.is_unspecified


def _hook(event, args):
    if event not in ("socket.connect", "socket.getaddrinfo", "socket.sendto"):
        return
    if event == "socket.getaddrinfo":
        host = args[0]
    else:
        address = args[1]
        if not isinstance(address, tuple):  # AF_UNIX path or abstract name: local
            return
        host = address[0]
    if _loopback(host):
        return
    with open(_LOG, "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[:3], "event": event, "host": repr(host)}) + "\n")


if _LOG:
    sys.addaudithook(_hook)
    with open(_LOG + ".procs", "a") as fh:  # which processes carried the hook
        fh.write(json.dumps({"pid": os.getpid(), "argv": sys.argv}) + "\n")
'''


@pytest.fixture
def hooked_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    site = tmp_path / "egress-hook"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "egress.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "EGRESS_AUDIT_LOG": str(log)}  # fmt: skip
    return env, log


def test_the_hook_sees_egress(hooked_env: tuple[dict[str, str], Path]) -> None:
    """The hook itself works: a child that resolves a public name and connects to a public address is recorded."""
    env, log = hooked_env
    code = (
        "import socket\n"
        "try: socket.getaddrinfo('example.com', 443)\nexcept OSError: pass\n"
        "s = socket.socket(); s.settimeout(0.01)\n"
        "try: s.connect(('192.0.2.1', 9))\nexcept OSError: pass\n"
        "s2 = socket.socket(); s2.settimeout(0.2)\n"
        "try: s2.connect(('127.0.0.1', 9))\nexcept OSError: pass\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {(e["event"], e["host"]) for e in events} == {("socket.getaddrinfo", "'example.com'"), ("socket.connect", "'192.0.2.1'")}


def test_quickstart_and_package_make_no_connection_off_the_machine(hooked_env: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    env, log = hooked_env
    root = tmp_path / "qs"
    quick = subprocess.run([str(MLBOX_SCRIPT), "quickstart", str(root)], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=420)  # fmt: skip
    assert quick.returncode == 0, quick.stderr[-2000:]
    home = root / "project"
    packaged = subprocess.run([str(MLBOX_SCRIPT), "--home", str(home), "--json", "package", "churn_api"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert packaged.returncode == 0, packaged.stderr[-2000:]
    assert json.loads(packaged.stdout)["tag"].startswith("mlbox-churn-api:")
    egress = log.read_text().splitlines() if log.exists() else []
    assert egress == [], "\n".join(egress[:20])
    # the hook really was in the children: the server (over TLS on loopback), and bentoml build
    procs = [" ".join(json.loads(line)["argv"]) for line in Path(f"{log}.procs").read_text().splitlines()]
    assert any("serve" in p and "--port" in p for p in procs), procs
    assert any(p.startswith("-m build ") and "--output tag" in p for p in procs), procs  # python -m bentoml build
