"""Several processes writing one box at once: no 'database is locked', nothing lost, chain intact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mlbox.box import Box
from mlbox.config import load_settings

from .conftest import OS_USER

PROCESSES = 4
WRITES = 500

WORKER = """
import sys, time
from pathlib import Path
from mlbox.box import Box
from mlbox.config import load_settings

home, proc, writes, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
box = Box(load_settings(home))
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("never started")
    time.sleep(0.005)
for n in range(writes):
    if n % 2:
        box.identity.add_user("alice", f"p{proc}_u{n}", "viewer")
    else:
        box.audit.record("alice", "test.concurrent", f"p{proc}", {"proc": proc, "n": n})
box.close()
"""


def test_processes_write_concurrently_without_lock_errors(box: Box, home: Path, tmp_path: Path) -> None:
    before = box.audit.verify().checked
    box.close()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(home), str(p), str(WRITES), str(go)],
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(PROCESSES)
    ]
    time.sleep(0.5)  # let every process open the box before they all start writing
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert "database is locked" not in err
        assert proc.returncode == 0, err

    with Box(load_settings(home)) as after:
        result = after.audit.verify()
        assert result.ok, result.problem
        assert result.checked == before + PROCESSES * WRITES
        records = after.audit.entries(action="test.concurrent", limit=PROCESSES * WRITES)
        assert sorted((e.details["proc"], e.details["n"]) for e in records) == [
            (p, n) for p in range(PROCESSES) for n in range(0, WRITES, 2)
        ]
        users = {u.name for u in after.identity.users()}
        assert users == {OS_USER} | {f"p{p}_u{n}" for p in range(PROCESSES) for n in range(1, WRITES, 2)}
        assert len(after.audit.entries(action="auth.user.add", limit=10_000)) == 1 + PROCESSES * WRITES // 2
        seqs = [r["seq"] for r in after.db.query("SELECT seq FROM audit ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1))
        assert after.db.integrity() == []
