"""Which process runs a run: pid, the process's start time and the host, and whether it still lives.

A pid alone is not an identity: after a crash the number is reused by an unrelated process.
The start time (psutil's `create_time`, seconds since the epoch) tells the two apart, and the
host name keeps a box on a shared disk from judging processes of another machine.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil

# create_time is read from /proc with clock-tick resolution; a recorded and a re-read value
# of the same process agree far closer than this.
START_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, told apart from any later process that reuses its pid."""

    pid: int
    started: float
    host: str


def current() -> ProcessIdentity:
    """This process."""
    pid = os.getpid()
    return ProcessIdentity(pid, psutil.Process(pid).create_time(), socket.gethostname())


def is_alive(identity: ProcessIdentity) -> bool | None:
    """True if the process still runs, False if it is gone, None when it cannot be told (another host)."""
    if identity.host != socket.gethostname():
        return None
    try:
        process = psutil.Process(identity.pid)
        started = process.create_time()
        zombie = process.status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped by its parent
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return abs(started - identity.started) <= START_TOLERANCE_S and not zombie
