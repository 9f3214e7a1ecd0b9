"""The sidecar process of a serving worker: `python -m mlbox.api.sidecar HOME THREADS FLUSH_SECONDS MAX_ROWS`.

Started by each worker (serve/offload.py), never by hand. Reads frames on stdin, writes its
counters as JSON lines on stdout (everything else it prints goes to stderr, the server's log).
Exits when stdin closes, after flushing; SIGINT and SIGTERM are ignored so that a Ctrl-C or a
shutdown of the server's process group cannot cut the final flush short. It runs at nice 10:
its work can wait, the answers cannot.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

NICE = 10  # background work yields the CPU to the worker it serves (measured in docs/serving.md)


def main(argv: list[str]) -> int:
    os.nice(NICE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the counters
    home, threads, flush_seconds, max_rows = Path(argv[0]), int(argv[1]), float(argv[2]), int(argv[3])

    import logging

    from mlbox.box import Box
    from mlbox.config import load_settings
    from mlbox.serve.predlog import PredictionLog
    from mlbox.serve.runtime import ModelCache
    from mlbox.serve.sidecar import Sidecar

    def send(line: bytes) -> None:
        report.write(line)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] [mlbox-sidecar] %(message)s")
    with Box(load_settings(home, environ={}), actor="mlbox-serve") as box:
        sidecar = Sidecar(
            PredictionLog(box.paths.predictions, box.db, flush_seconds=flush_seconds, max_rows=max_rows,
                          on_error=lambda exc: sidecar._fail(f"flush failed: {exc}"), on_flush=lambda: sidecar.send()),
            ModelCache(box.registry, threads),
            send,
        )  # fmt: skip
        sidecar.run(sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
