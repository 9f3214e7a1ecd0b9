"""Which queued jobs start now, and on which GPUs: a pure function over a snapshot of the box.

Order: effective priority (priority plus `aging_per_minute` for every minute waited, so a
low-priority job cannot starve), then age. A job asking for GPUs gets that many free,
unallocated GPUs with at least its memory free — never a GPU another job holds — or, when
it may fall back and has waited `wait_gpu_s`, the CPU. Per-project quotas cap running jobs
and GPUs. A job that cannot start does not block the jobs behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuState:
    index: int
    memory_total_mb: int
    memory_free_mb: int
    allocated: bool = False  # held by a running job (of any worker)


@dataclass(frozen=True)
class QueuedJob:
    id: int
    project: str
    priority: int
    submitted_at: float
    gpus: int = 0
    gpu_memory_mb: int = 0
    cpu_fallback: bool = True
    wait_gpu_s: float = 600.0


@dataclass(frozen=True)
class Quota:
    max_running: int | None = None
    max_gpus: int | None = None


@dataclass(frozen=True)
class Usage:
    running: int = 0
    gpus: int = 0


@dataclass(frozen=True)
class Placement:
    job_id: int
    devices: tuple[int, ...]  # GPU indices; empty = CPU
    fallback: bool = False  # asked for GPUs, runs on CPU

    @property
    def on_cpu(self) -> bool:
        return not self.devices


@dataclass(frozen=True)
class Snapshot:
    queued: Sequence[QueuedJob]
    gpus: Sequence[GpuState]
    slots: int  # jobs this worker may still start
    usage: Mapping[str, Usage] = field(default_factory=dict)
    quotas: Mapping[str, Quota] = field(default_factory=dict)
    now: float = 0.0
    aging_per_minute: float = 1.0


def effective_priority(job: QueuedJob, now: float, aging_per_minute: float) -> float:
    return job.priority + aging_per_minute * max(0.0, now - job.submitted_at) / 60.0


def place(s: Snapshot) -> list[Placement]:
    """The jobs to start now, in start order."""
    order = sorted(s.queued, key=lambda j: (-effective_priority(j, s.now, s.aging_per_minute), j.submitted_at, j.id))
    free = {g.index: g for g in s.gpus if not g.allocated}
    usage = dict(s.usage)
    out: list[Placement] = []
    for job in order:
        if len(out) >= s.slots:
            break
        quota = s.quotas.get(job.project, Quota())
        used = usage.get(job.project, Usage())
        if quota.max_running is not None and used.running >= quota.max_running:
            continue
        placement: Placement | None = None
        if job.gpus <= 0:
            placement = Placement(job.id, ())
        else:
            fits = sorted(
                (g for g in free.values() if g.memory_free_mb >= job.gpu_memory_mb),
                key=lambda g: (g.memory_free_mb, g.index),
            )
            within_quota = quota.max_gpus is None or used.gpus + job.gpus <= quota.max_gpus
            if len(fits) >= job.gpus and within_quota:
                chosen = tuple(sorted(g.index for g in fits[: job.gpus]))  # tightest fit first keeps big GPUs free
                placement = Placement(job.id, chosen)
            elif job.cpu_fallback and s.now - job.submitted_at >= job.wait_gpu_s:
                placement = Placement(job.id, (), fallback=True)
        if placement is None:
            continue
        for index in placement.devices:
            free.pop(index)
        usage[job.project] = Usage(used.running + 1, used.gpus + len(placement.devices))
        out.append(placement)
    return out
