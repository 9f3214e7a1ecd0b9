"""Two claimers in two processes on one queue never start the same job nor share a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from .conftest import JobBox, wait_for

HELPER = Path(__file__).with_name("_claimer.py")


def test_parallel_claimers_never_share_a_job_or_a_gpu(jbox: JobBox, tmp_path: Path) -> None:
    q = jbox.queue
    wanted = {}
    for i in range(54):
        kind = i % 6
        if kind in (0, 1):
            job = q.submit("command", {"argv": ["true"]}, "alice", gpus=1, cpu_fallback=False, priority=i % 3)
        elif kind == 2:
            job = q.submit("command", {"argv": ["true"]}, "alice", gpus=1, gpu_memory_mb=40_000, cpu_fallback=False)
        elif kind == 3:
            job = q.submit("command", {"argv": ["true"]}, "alice", gpus=2, cpu_fallback=False)
        else:
            job = q.submit("command", {"argv": ["true"]}, "alice")
        wanted[job.id] = job
    go = tmp_path / "go"
    outs = [tmp_path / f"claimer{i}.jsonl" for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, str(HELPER), str(jbox.home), f"w{i}", str(out), str(tmp_path / f"ready{i}"), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for i, out in enumerate(outs)
    ]
    wait_for(lambda: all((tmp_path / f"ready{i}").exists() or p.poll() is not None for i, p in enumerate(procs)), 60, "both claimers")
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    records = [json.loads(line) for out in outs for line in out.read_text().splitlines()]

    # every job claimed exactly once, by one claimer, and both claimers took part
    counts = Counter(r["id"] for r in records)
    assert set(counts) == set(wanted) and max(counts.values()) == 1
    assert {r["worker"] for r in records} == {"w0", "w1"}
    for r in records:
        job = q.get(r["id"])
        assert job.status == "succeeded" and job.attempts == 1 and job.worker == r["worker"]
        assert len(r["devices"]) == wanted[r["id"]].gpus
        if wanted[r["id"]].gpu_memory_mb == 40_000:
            assert r["devices"] == [1]  # only the 80 GB GPU fits

    # no GPU is held by two jobs at once, across both processes
    by_gpu: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for r in records:
        for d in r["devices"]:
            by_gpu[d].append((r["start"], r["end"], r["id"]))
    assert set(by_gpu) == {0, 1}
    for gpu, spans in by_gpu.items():
        spans.sort()
        for (s1, e1, j1), (s2, e2, j2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"GPU {gpu} held by jobs {j1} and {j2} at once"
    assert q.counts() == {"succeeded": len(wanted)}
