"""`mlbox bench`: reproducible benchmarks printing ratios against their floors."""

from __future__ import annotations

from typing import Annotated

import typer

from mlbox.cli._common import console, emit_json, state

app = typer.Typer(help="Benchmarks against raw DuckDB / sqlite3 / onnxruntime floors.", no_args_is_help=True)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "rows/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.4f}"
    return f"{value:.3f}"


@app.command("features")
def features(quick: Annotated[bool, typer.Option("--quick", help="Small sizes (CI smoke run).")] = False) -> None:
    """Ingest, point-in-time training set, materialize and online lookups vs their floors."""
    from rich.table import Table

    from mlbox.bench.features import FULL, QUICK, Row, run

    scale = QUICK if quick else FULL
    out = Table(title=f"mlbox bench features ({'quick' if quick else 'full'} sizes)", title_justify="left")
    for col in ("benchmark", "mlbox", "floor", "unit", "ratio", "floor is", "target", "ok"):
        out.add_column(col, justify="right" if col in ("mlbox", "floor", "ratio") else "left")

    def add(row: Row) -> None:
        mark = {True: "[green]yes[/green]", False: "[red]no[/red]", None: ""}[row.ok]
        ratio = f"{row.ratio:.2f}x" if row.ratio else "—"
        out.add_row(row.name, _fmt(row.mlbox, row.unit), _fmt(row.floor, row.unit), row.unit, ratio, row.floor_name, row.target, mark)

    with console.status("benchmarking", spinner="dots") as status:
        rows = run(scale, on_row=add, on_stage=lambda m: status.update(f"benchmarking: {m}"))
    if state.json:
        emit_json([r.as_dict() for r in rows])
    else:
        console.print(out)
