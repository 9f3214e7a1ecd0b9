"""`mlbox quickstart`: a full end-to-end run on bundled data, printing each step."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from mlbox.cli._common import console, emit_json, os_user, state


def quickstart(
    directory: Annotated[
        str | None, typer.Argument(help="New or empty folder to work in (default: a new temporary folder, kept).")
    ] = None,
    template: Annotated[str, typer.Option("--template", "-t", help="Project template to run.")] = "tabular-classification",
) -> None:
    """Create a fresh box from a template and run every capability on its bundled data."""
    from mlbox.quickstart import Step, run_quickstart

    root = Path(directory).expanduser() if directory else Path(tempfile.mkdtemp(prefix="mlbox-quickstart-"))

    def show(step: Step) -> None:
        if not state.json:
            console.print(f"[green]✓[/green] [bold]{step.name:<16}[/bold] {step.detail} [dim]({step.seconds:.2f}s)[/dim]", soft_wrap=True)

    if not state.json:
        console.print(f"mlbox quickstart in {root.resolve()}")
    report = run_quickstart(root, os_user(), template, show)
    if state.json:
        emit_json({"home": str(report.home), "steps": [s.__dict__ for s in report.steps]})
        return
    total = sum(s.seconds for s in report.steps)
    console.print(f"[bold green]quickstart passed[/bold green] in {total:.1f}s — explore it: mlbox --home {report.home} features list")


def register(app: typer.Typer) -> None:
    app.command()(quickstart)
