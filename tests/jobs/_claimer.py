"""Subprocess helper of the claim-concurrency test: a worker-like claimer over a simulated 2-GPU inventory.

python _claimer.py HOME NAME OUT READY GO
  touches READY once imported and open, waits for the file GO, then claims (2 slots) and finishes jobs until none is queued, holding each a few
  milliseconds. Writes one JSON line per job to OUT: id, devices, the time after its claim committed and
  the time before its finish began (so the recorded interval lies inside the one the job really held its GPUs).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.jobs.placement import GpuState

GPUS = [GpuState(0, 24_000, 24_000), GpuState(1, 80_000, 80_000)]


def main(home: str, name: str, out: str, ready: str, go: str) -> None:
    box = Box(load_settings(home, environ={}))
    q = box.jobs
    rng = random.Random(name)
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.005)
    held: dict[int, tuple[list[int], float, float]] = {}  # id -> devices, claimed at, hold until
    with open(out, "w") as fh:
        while True:
            now = time.time()
            for job_id, (devices, t0, until) in list(held.items()):
                if now >= until:
                    fh.write(json.dumps({"id": job_id, "devices": devices, "start": t0, "end": time.time(), "worker": name}) + "\n")
                    q.finish(job_id, "succeeded", 0, worker=name)
                    del held[job_id]
            claimed = q.claim(name, GPUS, 2 - len(held), lease_s=60)
            t = time.time()
            for job, placement in claimed:
                assert job.worker == name and list(placement.devices) == job.devices
                held[job.id] = (list(placement.devices), t, t + rng.uniform(0.002, 0.02))
            if not held and not claimed and not q.list_jobs("queued", 1):
                break
            time.sleep(0.001)
    box.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
