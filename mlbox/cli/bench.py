"""`mlbox bench`: reproducible benchmarks printing ratios against their floors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from mlbox.cli._common import console, emit_json, state

app = typer.Typer(help="Benchmarks against raw DuckDB / sqlite3 / onnxruntime floors.", no_args_is_help=True)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit.endswith("/s") or unit in ("records", "features"):
        return f"{value:,.0f}"
    if unit == "abs diff":
        return f"{value:.1e}"
    if unit == "ms":
        return f"{value:.4f}"
    return f"{value:.3f}"


def _render(title: str, runner: Callable[..., list[Any]]) -> None:
    from rich.table import Table

    out = Table(title=title, title_justify="left")
    for col in ("benchmark", "mlbox", "floor", "unit", "ratio", "floor is", "target", "ok"):
        out.add_column(col, justify="right" if col in ("mlbox", "floor", "ratio") else "left", overflow="fold")  # wrap, never cut

    def add(row: Any) -> None:
        mark = {True: "[green]yes[/green]", False: "[red]no[/red]", None: ""}[row.ok]
        ratio = f"{row.ratio:.2f}x" if row.ratio else "—"
        out.add_row(row.name, _fmt(row.mlbox, row.unit), _fmt(row.floor, row.unit), row.unit, ratio, row.floor_name, row.target, mark)

    with console.status("benchmarking", spinner="dots") as status:
        rows = runner(on_row=add, on_stage=lambda m: status.update(f"benchmarking: {m}"))
    if state.json:
        emit_json([r.as_dict() for r in rows])
    else:
        console.print(out)


@app.command("features")
def features(quick: Annotated[bool, typer.Option("--quick", help="Small sizes (CI smoke run).")] = False) -> None:
    """Ingest, point-in-time training set, materialize and online lookups vs their floors."""
    from mlbox.bench.features import FULL, QUICK, run

    scale = QUICK if quick else FULL
    _render(f"mlbox bench features ({'quick' if quick else 'full'} sizes)", lambda **kw: run(scale, **kw))


@app.command("train")
def train(quick: Annotated[bool, typer.Option("--quick", help="Small sizes (CI smoke run).")] = False) -> None:
    """XGBoost through `mlbox train` vs `xgboost.train`, ONNX export, and log_metric throughput."""
    from mlbox.bench.train import FULL, QUICK, run

    scale = QUICK if quick else FULL
    _render(f"mlbox bench train ({'quick' if quick else 'full'} sizes)", lambda **kw: run(scale, **kw))


@app.command("serve")
def serve(
    quick: Annotated[bool, typer.Option("--quick", help="Short runs and a small model (CI smoke run).")] = False,
    overload: Annotated[
        bool, typer.Option("--overload", help="Only the flood at 2x capacity: admitted p99 vs unloaded p99, share 429, errors.")
    ] = False,
    queue_ms: Annotated[
        float, typer.Option("--queue-ms", min=0.1, help="serve.max_queue_ms of the server flooded by --overload.")
    ] = 0.3,
    no_pin: Annotated[
        bool, typer.Option("--no-pin", help="--overload: let the load generator share the serving worker's CPUs.")
    ] = False,
) -> None:
    """`mlbox serve` (canary, shadow, logging on) vs Starlette and BentoML; `mlbox predict` vs raw onnxruntime."""
    from mlbox.bench.batch import batch_row, run_batch_bench
    from mlbox.bench.serve import FULL, QUICK, run

    scale = QUICK if quick else FULL
    if overload:
        from mlbox.bench import overload as flood

        title = f"mlbox bench serve --overload ({'quick' if quick else 'full'})"
        _render(title, lambda **kw: flood.run(flood.QUICK if quick else flood.FULL, queue_ms, pin=not no_pin, **kw))
        return

    def serve_and_batch(on_row: Callable[[Any], None], on_stage: Callable[[str], None]) -> list[Any]:
        rows = run(scale, on_row=on_row, on_stage=on_stage)
        batch = batch_row(run_batch_bench(quick, on_stage=on_stage))  # `mlbox predict`: rows/s vs raw onnxruntime
        on_row(batch)
        return [*rows, batch]

    _render(f"mlbox bench serve ({'quick' if quick else 'full'})", serve_and_batch)


@app.command("monitor")
def monitor(quick: Annotated[bool, typer.Option("--quick", help="100k rows instead of 1M (CI smoke run).")] = False) -> None:
    """A full drift check of 1M logged rows x 50 features vs the same tests in plain numpy/scipy: seconds, peak RSS."""
    from mlbox.bench.monitor import FULL, QUICK, run

    scale = QUICK if quick else FULL
    _render(f"mlbox bench monitor ({'quick' if quick else 'full'} sizes)", lambda **kw: run(scale, **kw))


@app.command("encryption")
def encryption(
    quick: Annotated[bool, typer.Option("--quick", help="20,000-row batches, 3 rounds (CI smoke run).")] = False,
    rows: Annotated[
        int | None, typer.Option("--rows", min=100, help="Rows per ingested batch (default 1,000,000; 20,000 with --quick).")
    ] = None,
) -> None:
    """Ingest, training set, materialize, online lookup, predict with logging, log flush, model load: encrypted vs plain box."""
    from mlbox.bench.encryption import FULL, QUICK, run

    scale = QUICK if quick else FULL
    scale = scale.with_rows(rows) if rows else scale
    title = f"mlbox bench encryption ({'quick' if quick else 'full'} sizes, {scale.rows:,}-row batches, {scale.rounds} rounds)"
    _render(f"{title}: mlbox = encrypted box, floor = plain box, same run", lambda **kw: run(scale, **kw))
