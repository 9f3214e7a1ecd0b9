"""`mlbox labels`: attach ground truth to logged predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlbox.cli._common import actor, done, open_box

app = typer.Typer(help="Ground truth for logged predictions.", no_args_is_help=True)


@app.command("ingest")
def ingest(
    deployment: Annotated[str, typer.Argument(help="Deployment whose predictions the labels belong to.")],
    file: Annotated[str, typer.Argument(help="CSV or Parquet: label + request_id, or label + entity keys + timestamp.")],
    label: Annotated[str, typer.Option("--label", help="Label column.")] = "label",
    timestamp: Annotated[str, typer.Option("--timestamp", help="Timestamp column (entity matching).")] = "ts",
    key: Annotated[list[str] | None, typer.Option("--key", help="Entity key column(s) (default: the other columns).")] = None,
) -> None:
    """Match labels to predictions by request id, or by entity and time, and store them."""
    from mlbox.serve.labels import ingest_labels

    with open_box() as box:
        who = actor(box, "features.write")
        box.deployments.get(deployment)
        r = ingest_labels(box.db, box.audit, box.paths.predictions, deployment, Path(file), who.name, label, timestamp, key,
                          limits=box.features.offline.limits)  # fmt: skip
    done(r.__dict__, f"{r.matched:,} of {r.rows:,} labels matched predictions of {deployment} (by {r.mode}) → {r.path}")
