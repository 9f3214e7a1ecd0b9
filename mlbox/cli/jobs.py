"""`mlbox jobs` and `mlbox worker`: the job queue and the process that runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlbox.cli._common import actor, console, done, emit_json, open_box, record, state, table
from mlbox.errors import Conflict, NotFound, PermissionDenied, UsageError
from mlbox.jobs.queue import Job
from mlbox.jobs.worker import die_with_parent
from mlbox.types import parse_duration

if TYPE_CHECKING:
    from mlbox.box import Box

app = typer.Typer(help="The job queue: train, materialize, predict and command jobs on GPUs or CPU.", no_args_is_help=True)
COLUMNS = ["id", "type", "project", "priority", "status", "gpus", "devices", "attempts", "submitted", "worker", "error"]
DEFAULT_COLUMNS = ["id", "type", "status", "priority", "devices", "submitted", "error"]  # the rest: --wide


def _row(j: Job) -> dict[str, object]:
    d = j.as_dict()
    d["submitted"] = datetime.fromtimestamp(d["submitted_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    d["devices"] = "cpu" if d["devices"] == [] else d["devices"]
    return d


def _memory(text: str | None) -> int:
    if not text:
        return 0
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
    t = text.strip().lower().rstrip("ib")
    if t and t[-1] in units and t[:-1].replace(".", "", 1).isdigit():
        return int(float(t[:-1]) * units[t[-1]])
    if t.isdigit():
        return int(t)
    raise UsageError(f"invalid memory size {text!r}", hint="use e.g. 512M, 8G (MiB without a unit)")


def _predict_payload(box: Box, args: list[str], force: bool) -> dict[str, object]:
    """A predict job's payload, checked now (model, files, output place) rather than in the worker."""
    from mlbox.serve.batch import check_output, file_format

    if len(args) != 3:
        raise UsageError("predict jobs take three arguments: MODEL INPUT OUTPUT")
    version = box.registry.get(args[0])
    source = Path(args[1]).expanduser().resolve()
    if not source.is_file():
        raise NotFound(f"input file {source} does not exist")
    file_format(source, "input")
    roots = [str(Path.cwd()), str(box.paths.home)]
    target = check_output(Path(args[2]), input=source, roots=[Path(r) for r in roots], box=box.paths.home, force=force)
    return {"model": version.ref, "input": str(source), "output": str(target), "roots": roots, "force": force}


@app.command("submit")
def submit(
    type: Annotated[str, typer.Argument(help="train, materialize, predict, monitor, retention or command.")],
    args: Annotated[
        list[str] | None,
        typer.Argument(help="train: SPEC; materialize: [VIEW]; predict: MODEL INPUT OUTPUT; monitor: DEPLOYMENT; retention: none; command: the command line after --."),
    ] = None,
    priority: Annotated[int, typer.Option("--priority", "-p", help="Higher runs first.")] = 0,
    project: Annotated[str, typer.Option("--project", help="Quota group.")] = "default",
    gpus: Annotated[int, typer.Option("--gpus", min=0, help="GPUs the job needs.")] = 0,
    gpu_memory: Annotated[str | None, typer.Option("--gpu-memory", help="Free memory needed per GPU, e.g. 8G.")] = None,
    cpus: Annotated[float, typer.Option("--cpus", help="CPU cores (threads) for the job.")] = 1.0,
    memory: Annotated[str | None, typer.Option("--memory", help="Memory limit, e.g. 4G.")] = None,
    timeout: Annotated[str, typer.Option("--timeout", help="Wall-clock limit, e.g. 30m, 2h.")] = "1h",
    no_cpu_fallback: Annotated[bool, typer.Option("--no-cpu-fallback", help="Wait for a GPU instead of falling back to CPU.")] = False,
    gpu_wait: Annotated[str, typer.Option("--gpu-wait", help="How long to wait for a GPU before falling back to CPU.")] = "10m",
    retries: Annotated[int, typer.Option("--retries", min=0, help="Extra attempts if its worker dies.")] = 0,
    register: Annotated[bool, typer.Option("--register", help="train: register the model.")] = False,
    full: Annotated[bool, typer.Option("--full", help="materialize: rebuild from every batch.")] = False,
    force: Annotated[bool, typer.Option("--force", help="predict: replace the output file if it exists.")] = False,
    every: Annotated[str | None, typer.Option("--every", help="retention: also queue it again this often, e.g. 1d (replaces its schedule).")] = None,
) -> None:
    """Queue a job."""
    args = args or []
    with open_box() as box:
        who = actor(box, "jobs.submit")
        every_s = parse_duration(every) if every is not None else None
        if every_s is not None:
            from mlbox.jobs.schedules import SCHEDULABLE

            if type not in SCHEDULABLE:
                raise UsageError(f"{type} jobs cannot be scheduled", hint=f"--every applies to {', '.join(SCHEDULABLE)} jobs")
        if type == "train":
            actor(box, "train.run")  # before reading the spec
            if len(args) != 1:
                raise UsageError("train jobs take one argument: the training spec")
            spec = Path(args[0]).expanduser().resolve()
            from mlbox.train.spec import load_spec

            load_spec(spec)  # refuse a bad spec now, not in the worker
            payload: dict[str, object] = {"spec": str(spec), "register": register}
        elif type == "materialize":
            actor(box, "features.write")
            payload = {"view": args[0] if args else None, "full": full}
        elif type == "predict":
            actor(box, "predict")
            payload = _predict_payload(box, args, force)
        elif type == "monitor":
            actor(box, "deploy.manage")  # its policy may roll back, promote or deploy a canary
            if len(args) != 1:
                raise UsageError("monitor jobs take one argument: the deployment whose policy runs")
            from mlbox.loop import load_policy

            load_policy(box, args[0])  # refuse a deployment without a policy now, not in the worker
            payload = {"deployment": args[0]}
        elif type == "retention":
            actor(box, "box.admin")  # the purge deletes data past its retention
            if args:
                raise UsageError("retention jobs take no arguments: what to purge is declared (view retention, privacy.* settings)")
            from mlbox.privacy.retention import deployment_retention, log_retention

            for store in ("predictions", "labels"):
                log_retention(box, store)  # refuse a bad setting now, not in the worker
            deployment_retention(box)
            payload = {}
        elif type == "command":
            actor(box, "jobs.command")
            if not args:
                raise UsageError("command jobs need a command: mlbox jobs submit command -- python script.py")
            payload = {"argv": args}
        else:
            payload = {}
        job = box.jobs.submit(
            type, payload, who.name, project=project, priority=priority, gpus=gpus,
            gpu_memory_mb=_memory(gpu_memory), cpus=cpus, memory_mb=_memory(memory), timeout_s=parse_duration(timeout),
            cpu_fallback=not no_cpu_fallback, wait_gpu_s=parse_duration(gpu_wait), max_attempts=retries + 1,
        )  # fmt: skip
        if every_s is not None:
            from mlbox.jobs.schedules import Schedules

            Schedules(box.jobs).set(type, payload, every_s, who.name)
    again = f", then every {every}" if every_s is not None else ""
    done(_row(job), f"queued job {job.id} ({job.type}, priority {job.priority}, {job.gpus} GPU(s)){again}")


@app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option("--status", help="queued, running, succeeded, failed, cancelled, timed_out.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N jobs.")] = 30,
) -> None:
    """Jobs with status, devices and attempts, and the GPU allocation."""
    with open_box() as box:
        actor(box, "read")
        jobs = box.jobs.list_jobs(status, limit)
        allocation = box.jobs.gpu_allocation()
    table([_row(j) for j in jobs], COLUMNS, default=DEFAULT_COLUMNS)
    if allocation and not state.json:
        console.print("GPUs: " + ", ".join(f"{g} → job {j}" for g, j in sorted(allocation.items())))


@app.command("show")
def show(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Everything about one job."""
    with open_box() as box:
        actor(box, "read")
        job = box.jobs.get(job_id)
    record(_row(job), title=f"job {job.id}")


@app.command("logs")
def logs(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's log."""
    with open_box() as box:
        actor(box, "read")
        job = box.jobs.get(job_id)
        path = box.paths.logs / "jobs" / f"{job_id}.log"
        offset = 0
        while True:
            if path.exists():
                with path.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
                    offset += len(chunk)
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            if not follow or job.status not in ("queued", "running"):
                break
            time.sleep(0.5)
            job = box.jobs.get(job_id)
        if not path.exists() and not follow:
            raise NotFound(f"job {job_id} has no log yet ({job.status})")


@app.command("cancel")
def cancel(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Cancel a queued job, or stop a running one and its children."""
    with open_box() as box:
        who = actor(box, "jobs.submit")
        job = box.jobs.cancel(job_id, who.name, owner=who)
    done(_row(job), f"job {job.id}: {'cancelled' if job.status == 'cancelled' else 'stopping'}")


@app.command("retry")
def retry(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Queue a failed, cancelled or timed-out job again."""
    with open_box() as box:
        who = actor(box, "jobs.submit")
        job = box.jobs.retry(job_id, who.name, owner=who)
    done(_row(job), f"job {job.id} queued again")


@app.command("quota")
def quota(
    project: Annotated[str, typer.Argument(help="Project.")],
    max_running: Annotated[int | None, typer.Option("--max-running", min=0, help="Jobs running at once.")] = None,
    max_gpus: Annotated[int | None, typer.Option("--max-gpus", min=0, help="GPUs held at once.")] = None,
) -> None:
    """Set a project's quota."""
    with open_box() as box:
        box.jobs.set_quota(project, max_running, max_gpus, actor(box, "box.admin").name)
    done({"project": project, "max_running": max_running, "max_gpus": max_gpus}, f"quota of {project} set")


@app.command("schedules")
def schedules() -> None:
    """The queue's schedules: which job type `mlbox worker` queues again, how often, next when."""
    from mlbox.jobs.schedules import Schedules

    with open_box() as box:
        actor(box, "read")
        rows = [s.as_dict() for s in Schedules(box.jobs).all()]
    table(rows, ["name", "type", "every_s", "next_run_at", "created_by"])


@app.command("unschedule")
def unschedule(name: Annotated[str, typer.Argument(help="Schedule name (its job type, e.g. retention).")]) -> None:
    """Stop queueing a scheduled job type (jobs already queued stay)."""
    from mlbox.jobs.schedules import Schedules

    with open_box() as box:
        who = actor(box, "box.admin")
        Schedules(box.jobs).remove(name, who.name)
    done({"name": name}, f"schedule {name} removed")


@app.command("exec", hidden=True)
def exec_job(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Run one job in this process (the worker starts this; not for people)."""
    from mlbox.box import Box

    with open_box() as probe:
        who = actor(probe, "jobs.submit")  # what the worker itself needs (the worker drops MLBOX_TOKEN)
        job = probe.jobs.get(job_id)
        _check_exec(job, who.name)
        settings = probe.settings
    with Box(settings, actor=job.submitted_by) as box:
        console.print(f"job {job.id}: {job.type} {json.dumps(job.payload)}")
        if job.type == "train":
            from mlbox.train.runner import train
            from mlbox.train.spec import load_spec, parse_spec

            if "spec_inline" in job.payload:  # a policy's retrain: the deployed model's own spec
                spec = parse_spec(job.payload["spec_inline"], f"job {job.id} spec", Path(job.payload["base_dir"]))
            else:
                spec = load_spec(Path(job.payload["spec"]))
            result = train(spec, store=box.features if spec.data.labels else None, tracking=box.tracking,
                           registry=box.registry, actor=job.submitted_by, register=bool(job.payload.get("register")))  # fmt: skip
            console.print(f"run {result.run_id} on {result.device} ({result.device_reason}): {result.metrics}")
            if result.version:
                console.print(f"registered {result.version.ref}")
                if job.payload.get("retrain"):
                    from mlbox.loop import deploy_retrained

                    console.print(deploy_retrained(box, job.payload, result.version.ref, result.gate.passed, job.id, job.submitted_by))
            if not result.gate.passed:
                raise UsageError(f"gate failed: {'; '.join(result.gate.reasons)}")
        elif job.type == "monitor":
            from mlbox.loop import run_policy

            outcome = run_policy(box, job.payload["deployment"], job.submitted_by)
            console.print(json.dumps(outcome, default=str))
        elif job.type == "materialize":
            for r in box.features.materialize(job.payload.get("view"), full=True if job.payload.get("full") else None):
                console.print(f"{r.view}: {r.mode}, {r.rows} rows")
        elif job.type == "predict":
            from mlbox.serve.batch import predict_file

            p = job.payload
            scored = predict_file(box.registry, p["model"], Path(p["input"]), Path(p["output"]), box=box.paths.home,
                                  roots=[Path(r) for r in p["roots"]], force=bool(p["force"]), threads=max(1, int(job.cpus)),
                                  progress=_log_progress())  # fmt: skip
            box.audit.record(job.submitted_by, "predict.batch", scored.model,
                             {"rows": scored.rows, "input": scored.input, "output": scored.output, "job": job.id})  # fmt: skip
            console.print(f"scored {scored.rows} rows with {scored.model} into {scored.output} ({scored.rows_per_s:,.0f} rows/s)")
        elif job.type == "retention":
            from mlbox.privacy.retention import purge
            from mlbox.security.roles import allowed

            owner = box.identity.user(job.submitted_by)  # a schedule outlives its setter's role: check it at each run
            if owner.disabled_at or not allowed(owner.role, "box.admin"):
                raise PermissionDenied(
                    f"{owner.name} ({owner.role}) no longer holds box.admin, so this retention job does not purge",
                    hint="an admin submits it again (`mlbox jobs submit retention --every 1d`)",
                )
            purged = purge(box, job.submitted_by, job_id=job.id)
            for gone in purged.removals:
                console.print(f"{gone.store} {gone.target}: {gone.rows} row(s) before {gone.cutoff} in {gone.files} file(s), "
                              f"{gone.online_rows} online")  # fmt: skip
            console.print(f"purged {purged.rows} row(s) in {purged.files} file(s)")
        elif job.type == "command":
            sys.exit(subprocess.call(list(job.payload["argv"]), preexec_fn=die_with_parent))


def _check_exec(job: Job, who: str) -> None:
    """Only the worker holding a running job's lease starts it: this process's parent must be that worker
    (its name is host:pid:nonce, see jobs/worker.py), so nobody runs a queued or someone else's job by hand."""
    import os
    import socket

    if job.status != "running" or not job.worker:
        raise Conflict(
            f"job {job.id} is {job.status}; `jobs exec` runs only a job a worker has leased",
            hint="`mlbox worker` starts queued jobs",
        )
    host, _, rest = job.worker.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or pid != str(os.getppid()):
        raise PermissionDenied(
            f"{who} may not run job {job.id}: only its worker {job.worker} starts it",
            hint="`mlbox jobs exec` is the worker's; use `mlbox worker`",
        )


def _log_progress() -> Callable[[int, int | None], None]:
    """Progress lines for a job's log, at most one every 5 s (a log file is no terminal)."""
    last = [time.monotonic()]

    def report(rows: int, total: int | None) -> None:
        if time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            console.print(f"scored {rows} of {total if total is not None else '?'} rows")

    return report


def worker(
    gpus: Annotated[str, typer.Option("--gpus", help="auto (every visible GPU), none, or indices like 0,1.")] = "auto",
    slots: Annotated[int, typer.Option("--slots", min=1, help="Jobs run at once.")] = 1,
    once: Annotated[bool, typer.Option("--once", help="Exit when the queue has nothing left to start.")] = False,
) -> None:
    """Lease and run queued jobs (heartbeats; a dead worker's jobs are recovered)."""
    from mlbox.jobs.worker import Worker

    with open_box() as box:
        who = actor(box, "jobs.submit")
        from mlbox.loop import schedule_due

        w = Worker(box.jobs, box.paths.home, gpus=gpus, slots=slots, log=lambda m: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {m}"),
                   on_tick=lambda: schedule_due(box), actor=who.name)  # fmt: skip
        states = w.gpu_states()
        console.print(f"worker {w.name}: {len(states)} GPU(s) {[g.index for g in states] or ''} {slots} slot(s)")
        if state.json:
            emit_json({"worker": w.name, "gpus": [g.index for g in states], "slots": slots})
        w.run(once=once)


def register(main: typer.Typer) -> None:
    main.add_typer(app, name="jobs")
    main.command()(worker)
