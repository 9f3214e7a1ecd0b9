"""`mlbox train` and `mlbox runs`: training from a spec, and the tracked runs it leaves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from mlbox.cli._common import actor, console, emit_json, open_box, record, state, table
from mlbox.errors import MlboxError, UsageError

runs_app = typer.Typer(help="Tracked runs: list, show, compare.", no_args_is_help=True)


def train(
    spec: Annotated[str | None, typer.Argument(help="Training spec (default: the project.train setting).")] = None,
    register: Annotated[bool, typer.Option("--register", help="Register the model (native + ONNX) when training ends.")] = False,
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Register even if ONNX and native predictions differ beyond tolerance.")
    ] = False,
    promote_if_gate: Annotated[
        str | None, typer.Option("--promote-if-gate", help="Alias (staging or production) to give the version if its gate passes.")
    ] = None,
) -> None:
    """Train a model from a spec; exits non-zero when the spec's gate fails."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mlbox.train.runner import train as run_training
    from mlbox.train.spec import load_spec

    if promote_if_gate is not None and promote_if_gate not in ("staging", "production"):
        raise UsageError(f"cannot promote to {promote_if_gate!r}", hint="use staging or production")
    if promote_if_gate and not register:
        register = True
    with open_box() as box:
        who = actor(box, "train.run")
        if register:
            actor(box, "models.register")
        if promote_if_gate:
            actor(box, "models.promote")
        path = Path(spec) if spec else box.paths.home / box.settings["project.train"]
        parsed = load_spec(path)
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[metric]}"), TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=console, transient=True, disable=state.json) as bar:
            task = bar.add_task("starting", total=None, metric="")

            def show(stage: str, step: int, total: int | None, values: Mapping[str, float]) -> None:
                metric = "  ".join(f"{k} {v:.4g}" for k, v in list(values.items())[:3])
                bar.update(task, description=stage, completed=step, total=total, metric=metric)

            result = run_training(
                parsed,
                store=box.features if parsed.data.labels else None,
                tracking=box.tracking,
                registry=box.registry,
                actor=who.name,
                register=register,
                allow_mismatch=allow_mismatch,
                promote_if_gate=promote_if_gate,
                progress=show,
            )
    info = {
        "run": result.run_id,
        "device": result.device,
        "device_reason": result.device_reason,
        "metrics": result.metrics,
        "gate": {"passed": result.gate.passed, "reasons": result.gate.reasons},
        "model": result.version.ref if result.version else None,
        "onnx_max_abs_diff": result.version.onnx_max_abs_diff if result.version else None,
        "promoted": result.promoted,
    }
    if state.json:
        emit_json(info)
    else:
        console.print(f"run [bold]{result.run_id}[/bold] on {result.device} ({result.device_reason})")
        console.print("  " + "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
        if result.version:
            console.print(f"  registered [bold]{result.version.ref}[/bold] (ONNX max |diff| {result.version.onnx_max_abs_diff:.2g})")
        if result.promoted:
            console.print(f"  promoted to {result.promoted}")
        mark = "[green]passed[/green]" if result.gate.passed else "[red]failed[/red]"
        console.print(f"  gate {mark}: {'; '.join(result.gate.reasons)}")
    if not result.gate.passed:
        raise MlboxError(f"gate failed: {'; '.join(result.gate.reasons)}")


@runs_app.command("list")
def runs_list(
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="Only this experiment.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="running, finished, failed, interrupted or killed.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N runs.")] = 20,
) -> None:
    """List runs, newest first, with their latest metrics."""
    with open_box() as box:
        actor(box, "read")
        runs = box.tracking.runs(experiment, status, limit)
        metrics = box.tracking.latest_metrics(r.id for r in runs)
    rows = []
    keys: list[str] = []
    for r in runs:
        m = {k: v for k, v in metrics[r.id].items() if not k.startswith(("train_", "valid_"))}
        keys += [k for k in m if k not in keys]
        rows.append({"run": r.id, "experiment": r.experiment, "status": r.status, "device": r.device,
                     "started": r.started_at[:19], "seconds": round(r.duration_s or 0, 1),
                     **{k: None if v is None else round(v, 4) for k, v in m.items()}})  # fmt: skip
    table(rows, ["run", "experiment", "status", "device", "started", "seconds", *keys[:5]])


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]) -> None:
    """Everything recorded about a run."""
    with open_box() as box:
        actor(box, "read")
        info = box.tracking.run(run_id)
        metrics = box.tracking.latest_metrics([info.id])[info.id]
        artifacts = box.tracking.run_artifacts(info.id)
    data = {**info.as_dict(), "metrics": metrics, "artifacts": artifacts}
    if state.json:
        emit_json(data)
        return
    data.pop("environment")
    record({k: v for k, v in data.items() if v not in (None, {}, [])}, title=f"run {info.id}")


@runs_app.command("compare")
def runs_compare(run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.")]) -> None:
    """Params and metrics of several runs side by side."""
    with open_box() as box:
        actor(box, "read")
        runs = [box.tracking.run(r) for r in run_ids]
        metrics = box.tracking.latest_metrics(r.id for r in runs)
    names = sorted({k for r in runs for k in r.params}) + sorted({k for r in runs for k in metrics[r.id]})
    rows = []
    for key in names:
        row: dict[str, object] = {"": key}
        for r in runs:
            value = r.params.get(key) if key in r.params else metrics[r.id].get(key)
            row[r.id[:8]] = round(value, 5) if isinstance(value, float) else value
        rows.append(row)
    for field in ("status", "device", "dataset_fingerprint", "code_rev"):
        rows.insert(0, {"": field, **{r.id[:8]: str(getattr(r, field) or "")[:16] for r in runs}})
    table(rows, ["", *(r.id[:8] for r in runs)])


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.add_typer(runs_app, name="runs")
