"""`mlbox predict`: score a Parquet or CSV file with a registered model, as serving would."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlbox.cli._common import actor, done, err_console, open_box, state

if TYPE_CHECKING:
    from mlbox.box import Box


def predict(
    model: Annotated[str, typer.Argument(help="NAME:VERSION, NAME:staging, NAME:production or NAME (latest).")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Parquet or CSV file to score.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .parquet or .csv (under this folder or the box).")],
    force: Annotated[bool, typer.Option("--force", help="Replace the output file if it exists.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=0, help="onnxruntime threads (0: every core).")] = 0,
    batch_rows: Annotated[int | None, typer.Option("--batch-rows", min=1, help="Rows scored per batch (default 65536).")] = None,
) -> None:
    """Score a file: input columns plus prediction columns, written whole or not at all."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mlbox.serve.batch import BATCH_ROWS, predict_file

    with open_box() as box:
        who = actor(box, "predict", scoped=True)
        _in_scope(box, model)
        columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn())
        with Progress(*columns, console=err_console, disable=state.json, transient=True) as bar:
            task = bar.add_task("scoring", total=None)
            result = predict_file(
                box.registry, model, input, out, box=box.paths.home, roots=(Path.cwd(), box.paths.home), force=force,
                threads=threads, batch_rows=batch_rows or BATCH_ROWS, progress=lambda n, total: bar.update(task, completed=n, total=total),
            )  # fmt: skip
        box.audit.record(who.name, "predict.batch", result.model, {"rows": result.rows, "input": result.input, "output": result.output})
    done(result.as_dict(), f"scored {result.rows} rows with {result.model} into {result.output} ({result.rows_per_s:,.0f} rows/s)")


def _in_scope(box: Box, model: str) -> None:
    """By a scoped token, score only with a model one of its deployments serves (primary, canary or shadow)."""
    from mlbox.cli.auth import token_scopes
    from mlbox.errors import PermissionDenied

    scopes = token_scopes(box)
    if scopes is None:
        return
    ref = box.registry.get(model).ref
    for d in box.deployments.all():
        if scopes.allows("deployment", d.name) and ref in (d.primary_model, d.canary_model, d.shadow_model):
            return
    raise PermissionDenied(
        f"this token is not scoped to a deployment serving {ref}",
        hint=f"its deployments: {', '.join(sorted(scopes.deployments)) or 'none'}",
    )


def register(main: typer.Typer) -> None:
    main.command()(predict)
