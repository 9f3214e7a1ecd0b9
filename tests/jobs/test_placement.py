"""The pure placement function: order, aging, quotas, GPU fit, CPU fallback, no head-of-line blocking."""

from __future__ import annotations

from mlbox.jobs.placement import GpuState, Placement, QueuedJob, Quota, Snapshot, Usage, effective_priority, place

NOW = 1_000_000.0
GB = 1024


def job(id: int, priority: int = 0, age_s: float = 0.0, **kw) -> QueuedJob:  # type: ignore[no-untyped-def]
    return QueuedJob(id=id, project=kw.pop("project", "default"), priority=priority, submitted_at=NOW - age_s, **kw)


def gpu(index: int, total_gb: int, free_gb: int | None = None, allocated: bool = False) -> GpuState:
    return GpuState(index, total_gb * GB, (total_gb if free_gb is None else free_gb) * GB, allocated)


def plan(queued, gpus=(), slots=10, **kw) -> list[Placement]:  # type: ignore[no-untyped-def]
    return place(Snapshot(list(queued), list(gpus), slots, now=NOW, **kw))


def ids(placements: list[Placement]) -> list[int]:
    return [p.job_id for p in placements]


def test_priority_then_age_then_id() -> None:
    queued = [job(1, 0, age_s=5), job(2, 5, age_s=1), job(3, 5, age_s=3), job(4, 0, age_s=5), job(5, -2, age_s=10)]
    # aging off, so only priority and then submission time (then id) decide
    assert ids(plan(queued, aging_per_minute=0)) == [3, 2, 1, 4, 5]
    assert ids(plan(queued, slots=2, aging_per_minute=0)) == [3, 2]


def test_aging_lets_an_old_low_priority_job_overtake_a_newer_higher_one() -> None:
    old_low, new_high = job(1, priority=0, age_s=0), job(2, priority=3, age_s=0)
    assert ids(plan([old_low, new_high], slots=1)) == [2]
    # after 2 minutes of waiting the low one is at 2 < 3: still behind
    old_low = job(1, priority=0, age_s=120)
    assert ids(plan([old_low, new_high], slots=1)) == [2]
    # after 4 minutes it is at 4 > 3: it goes first
    old_low = job(1, priority=0, age_s=240)
    assert ids(plan([old_low, new_high], slots=1)) == [1]
    assert effective_priority(old_low, NOW, 1.0) == 4.0
    # a faster aging rate overtakes sooner; no aging never does
    assert ids(plan([job(1, 0, age_s=120), new_high], slots=1, aging_per_minute=2.0)) == [1]
    assert ids(plan([job(1, 0, age_s=10_000), new_high], slots=1, aging_per_minute=0.0)) == [2]


def test_future_submission_does_not_lower_priority() -> None:
    assert effective_priority(job(1, 2, age_s=-600), NOW, 1.0) == 2.0


def test_slots_limit() -> None:
    queued = [job(i) for i in range(1, 6)]
    assert len(plan(queued, slots=3)) == 3
    assert plan(queued, slots=0) == []
    assert len(plan(queued, slots=100)) == 5


def test_quota_max_running_counts_running_and_planned_jobs() -> None:
    queued = [job(1, 9, project="a"), job(2, 8, project="a"), job(3, 7, project="a"), job(4, 0, project="b")]
    quotas = {"a": Quota(max_running=2)}
    assert ids(plan(queued, quotas=quotas)) == [1, 2, 4]
    # one already running elsewhere: only one more starts
    assert ids(plan(queued, quotas=quotas, usage={"a": Usage(running=1)})) == [1, 4]
    assert ids(plan(queued, quotas={"a": Quota(max_running=0)})) == [4]


def test_quota_max_gpus() -> None:
    gpus = [gpu(i, 80) for i in range(4)]
    queued = [
        job(1, 9, project="a", gpus=2, cpu_fallback=False),
        job(2, 8, project="a", gpus=1, cpu_fallback=False),
        job(3, 7, project="a", gpus=1, cpu_fallback=False),
        job(4, 6, project="b", gpus=1, cpu_fallback=False),
    ]
    out = plan(queued, gpus, quotas={"a": Quota(max_gpus=3)})
    assert ids(out) == [1, 2, 4]
    assert sum(len(p.devices) for p in out if p.job_id in (1, 2)) == 3
    # two GPUs already held by project a: only the 1-GPU job fits its quota
    out = plan(queued, gpus, quotas={"a": Quota(max_gpus=3)}, usage={"a": Usage(running=1, gpus=2)})
    assert ids(out) == [2, 4]
    # a CPU job of a project at its GPU quota still runs
    assert ids(plan([job(5, project="a")], gpus, quotas={"a": Quota(max_gpus=0)})) == [5]


def test_gpu_memory_fit_skips_small_gpu_and_takes_the_big_one() -> None:
    gpus = [gpu(0, 24), gpu(1, 80)]
    out = plan([job(1, gpus=1, gpu_memory_mb=40 * GB)], gpus)
    assert out == [Placement(1, (1,))]
    # nothing big enough: no placement (fallback not due yet)
    assert plan([job(1, gpus=1, gpu_memory_mb=40 * GB)], [gpu(0, 24), gpu(1, 80, free_gb=30)]) == []


def test_tightest_fit_first_keeps_big_gpus_for_big_jobs() -> None:
    gpus = [gpu(0, 80), gpu(1, 24), gpu(2, 48)]
    small = job(1, priority=5, gpus=1, gpu_memory_mb=8 * GB)
    medium = job(2, priority=4, gpus=1, gpu_memory_mb=30 * GB)
    big = job(3, priority=3, gpus=1, gpu_memory_mb=60 * GB)
    out = {p.job_id: p.devices for p in plan([small, medium, big], gpus)}
    assert out == {1: (1,), 2: (2,), 3: (0,)}
    # free memory decides, not total memory
    out = plan([job(1, gpus=1, gpu_memory_mb=GB)], [gpu(0, 80, free_gb=10), gpu(1, 24, free_gb=20)])
    assert out == [Placement(1, (0,))]


def test_never_an_allocated_gpu_nor_the_same_gpu_twice() -> None:
    gpus = [gpu(0, 80, allocated=True), gpu(1, 80), gpu(2, 80, allocated=True), gpu(3, 80)]
    queued = [job(i, gpus=1, cpu_fallback=False) for i in range(1, 6)]
    out = plan(queued, gpus)
    assert ids(out) == [1, 2]
    devices = [d for p in out for d in p.devices]
    assert sorted(devices) == [1, 3]
    # all allocated: no GPU job starts
    assert plan(queued, [gpu(0, 80, allocated=True)]) == []


def test_multi_gpu_jobs() -> None:
    gpus = [gpu(0, 80), gpu(1, 24), gpu(2, 80), gpu(3, 24)]
    out = plan([job(1, gpus=2, gpu_memory_mb=40 * GB), job(2, gpus=2, gpu_memory_mb=10 * GB, age_s=-1)], gpus)
    assert out == [Placement(1, (0, 2)), Placement(2, (1, 3))]
    # asks for more GPUs than fit: waits (no partial allocation), and the GPUs stay free for the next
    out = plan([job(1, 9, gpus=3, gpu_memory_mb=40 * GB, cpu_fallback=False), job(2, gpus=1)], gpus)
    assert out == [Placement(2, (1,))]
    out = plan([job(1, gpus=4)], gpus)
    assert out == [Placement(1, (0, 1, 2, 3))]


def test_cpu_fallback_only_after_wait_and_only_when_allowed() -> None:
    waiting = job(1, gpus=1, age_s=599, wait_gpu_s=600)
    due = job(1, gpus=1, age_s=600, wait_gpu_s=600)
    assert plan([waiting], []) == []
    assert plan([due], []) == [Placement(1, (), fallback=True)]
    assert plan([due], [])[0].on_cpu
    assert plan([job(1, gpus=1, age_s=10_000, cpu_fallback=False)], []) == []
    # a free GPU is used even when the fallback is due
    assert plan([due], [gpu(0, 24)]) == [Placement(1, (0,))]
    # GPUs busy: falls back once due
    assert plan([due], [gpu(0, 24, allocated=True)]) == [Placement(1, (), fallback=True)]
    assert plan([job(1, gpus=1, age_s=5, wait_gpu_s=0)], [gpu(0, 24, allocated=True)]) == [Placement(1, (), fallback=True)]


def test_a_blocked_gpu_job_does_not_block_jobs_behind_it() -> None:
    blocked = job(1, priority=10, gpus=1, gpu_memory_mb=100 * GB, cpu_fallback=False)
    cpu_job = job(2, priority=0)
    small_gpu_job = job(3, priority=0, gpus=1, age_s=-1)
    out = plan([blocked, cpu_job, small_gpu_job], [gpu(0, 24)])
    assert out == [Placement(2, ()), Placement(3, (0,))]
    # a quota-blocked job does not block either
    out = plan([job(1, 9, project="a"), job(2, 0, project="b")], quotas={"a": Quota(max_running=0)}, slots=1)
    assert ids(out) == [2]


def test_placement_is_pure() -> None:
    gpus = [gpu(0, 80), gpu(1, 24)]
    queued = [job(1, gpus=1), job(2, gpus=1), job(3)]
    usage = {"default": Usage(1, 0)}
    snap = Snapshot(queued, gpus, 5, usage, {}, NOW)
    assert place(snap) == place(snap)
    assert usage == {"default": Usage(1, 0)} and snap.gpus == gpus
