"""Jobs through the CLI, as users of different roles (API tokens): users cancel and retry their own jobs,
admins any, others are refused with exit 5; `mlbox jobs exec` runs only a running job, for the worker
that holds its lease."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from mlbox.box import Box
from mlbox.jobs.queue import Job

from ..conftest import OS_USER

NOT_ALLOWED = 5  # PermissionDenied (docs/cli.md: 5 not allowed)


@pytest.fixture
def tokens(box: Box) -> dict[str, str]:
    box.identity.add_user(OS_USER, "bob", "data-scientist")
    box.identity.add_user(OS_USER, "carol", "data-scientist")
    box.identity.add_user(OS_USER, "vic", "viewer")
    return {name: box.identity.create_token(OS_USER, name)[1] for name in (OS_USER, "bob", "carol", "vic")}


@pytest.fixture
def as_user(home: Path, tokens: dict[str, str], cli_run):  # type: ignore[no-untyped-def]
    """`as_user(name, *args)`: `mlbox ARGS` with `name`'s token."""

    def invoke(name: str, *args: str):  # type: ignore[no-untyped-def]
        return cli_run(*args, env={"MLBOX_HOME": str(home), "MLBOX_TOKEN": tokens[name]})

    return invoke


def job_of(box: Box, user: str, marker: Path | None = None) -> Job:
    code = f"open({str(marker)!r}, 'w').write('ran')" if marker else "pass"
    return box.jobs.submit("command", {"argv": [sys.executable, "-c", code]}, user)


def test_users_cancel_only_their_own_jobs(box: Box, as_user) -> None:  # type: ignore[no-untyped-def]
    job = job_of(box, "bob")
    r = as_user("carol", "jobs", "cancel", str(job.id))
    assert r.exit_code == NOT_ALLOWED, r.stderr
    assert "carol" in r.stderr and "submitted by bob" in r.stderr
    assert box.jobs.get(job.id).status == "queued"
    r = as_user("vic", "jobs", "cancel", str(job.id))  # a viewer may not touch jobs at all
    assert r.exit_code == NOT_ALLOWED and "jobs.submit" in r.stderr
    r = as_user("bob", "jobs", "cancel", str(job.id))
    assert r.exit_code == 0, r.stderr
    assert box.jobs.get(job.id).status == "cancelled"


def test_admin_cancels_and_retries_anyones_job(box: Box, as_user) -> None:  # type: ignore[no-untyped-def]
    job = job_of(box, "bob")
    assert as_user(OS_USER, "jobs", "cancel", str(job.id)).exit_code == 0
    assert as_user(OS_USER, "jobs", "retry", str(job.id)).exit_code == 0
    assert box.jobs.get(job.id).status == "queued"


def test_users_retry_only_their_own_jobs(box: Box, as_user) -> None:  # type: ignore[no-untyped-def]
    job = job_of(box, "bob")
    box.jobs.cancel(job.id, "bob")
    r = as_user("carol", "jobs", "retry", str(job.id))
    assert r.exit_code == NOT_ALLOWED and "may not retry job" in r.stderr, r.stderr
    assert box.jobs.get(job.id).status == "cancelled"
    r = as_user("bob", "jobs", "retry", str(job.id))
    assert r.exit_code == 0, r.stderr
    assert box.jobs.get(job.id).status == "queued"


def test_running_job_ownership(box: Box, as_user) -> None:  # type: ignore[no-untyped-def]
    job = job_of(box, "bob")
    box.jobs.claim("elsewhere:1:abc", [], 1, 60)
    assert as_user("carol", "jobs", "cancel", str(job.id)).exit_code == NOT_ALLOWED
    assert not box.jobs.get(job.id).cancel_requested
    assert as_user("bob", "jobs", "cancel", str(job.id)).exit_code == 0
    assert box.jobs.get(job.id).cancel_requested


def test_exec_refuses_a_job_no_worker_leased(box: Box, as_user, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"
    job = job_of(box, "bob", marker)
    r = as_user(OS_USER, "jobs", "exec", str(job.id))
    assert r.exit_code == 4 and "queued" in r.stderr, r.stderr
    assert not marker.exists()


def test_exec_refuses_anyone_but_the_lease_holder(box: Box, as_user, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"
    job = job_of(box, "bob", marker)
    box.jobs.claim(f"{socket.gethostname()}:1:other", [], 1, 60)  # pid 1 is not this process's parent
    r = as_user(OS_USER, "jobs", "exec", str(job.id))
    assert r.exit_code == NOT_ALLOWED and "only its worker" in r.stderr, r.stderr
    assert not marker.exists()


def test_exec_runs_for_its_worker_and_needs_jobs_submit(box: Box, as_user, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"
    job = job_of(box, "bob", marker)
    # the worker that leased it is this process's parent, as when a worker starts `mlbox jobs exec`
    box.jobs.claim(f"{socket.gethostname()}:{os.getppid()}:test", [], 1, 60)
    r = as_user("vic", "jobs", "exec", str(job.id))  # a viewer could never run a worker
    assert r.exit_code == NOT_ALLOWED and "jobs.submit" in r.stderr, r.stderr
    assert not marker.exists()
    r = as_user("bob", "jobs", "exec", str(job.id))
    assert r.exit_code == 0, r.stderr
    assert marker.read_text() == "ran"
