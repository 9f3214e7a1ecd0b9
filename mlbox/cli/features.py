"""`mlbox features`: definitions, ingest, training sets, materialization, online reads, lineage, SQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mlbox.cli._common import actor, console, emit_json, ok, open_box, record, state, table
from mlbox.cli.auth import require_scope
from mlbox.errors import UsageError

app = typer.Typer(help="Feature store: views, ingest, training sets, online store, lineage.", no_args_is_help=True)

FileOpt = Annotated[str | None, typer.Option("--file", "-f", help="Feature file (default: the project.features setting).")]


def _disclosure(box: Any, who: Any) -> str:
    """How `who` reads pii/restricted fields: raw with features.read_pii, else privacy.protected_reads."""
    from mlbox.security.roles import disclosure

    return disclosure(who, box.settings["privacy.protected_reads"])


def _changes(changes: list[Any], title: str) -> None:
    table([c.as_dict() for c in changes], ["kind", "name", "action", "detail"], title=title)


@app.command("plan")
def plan_cmd(file: FileOpt = None) -> None:
    """Show what `apply` would change."""
    with open_box() as box:
        actor(box, "read")
        changes = box.features.plan(box.features.load(file))
    _changes(changes, "plan")


@app.command("apply")
def apply_cmd(file: FileOpt = None) -> None:
    """Record the feature file: new entities and views, new versions on schema change."""
    with open_box() as box:
        who = actor(box, "features.write")
        changes = box.features.apply(box.features.load(file), who.name)
    _changes(changes, "applied")


@app.command("list")
def list_cmd() -> None:
    """List feature views (latest versions)."""
    with open_box() as box:
        actor(box, "read")
        rows = box.features.list_views()
    table(rows, ["view", "version", "entity", "fields", "batches", "rows", "classification", "pii", "owner"])


@app.command("show")
def show_cmd(view: Annotated[str, typer.Argument(help="View name, or NAME@VERSION.")]) -> None:
    """Versions, fields with tags and classification, batch history and statistics of a view."""
    with open_box() as box:
        who = actor(box, "read")
        info = box.features.show(view, protected=_disclosure(box, who))
    if state.json:
        emit_json(info)
        return
    record({k: info[k] for k in ("view", "entity", "timestamp", "ttl", "retention", "purpose", "legal_basis", "owner",
                                 "classification", "source", "description")})  # fmt: skip
    for line in info["purges"]:
        console.print(f"[yellow]purged[/yellow] {line}")
    table(info["versions"], ["version", "hash", "created_at", "created_by"], title="versions")
    rows = []
    for f in info["fields"]:
        s = f["stats"]
        summary = "masked (protected field)" if s.get("masked") else (
            f"mean {s['mean']:.4g} std {s['std'] or 0:.4g} [{s['min']}, {s['max']}]"
            if s.get("mean") is not None
            else (", ".join(f"{v} ({n})" for v, n in s.get("top", [])[:3]) if s.get("top") else "")
        )
        rows.append({**f, "nulls": s.get("nulls"), "summary": summary, "tags": json.dumps(f["tags"]) if f["tags"] else ""})
    table(rows, ["name", "dtype", "classification", "pii", "nulls", "summary", "description"], title="fields (latest batch)")
    table(info["batches"], ["id", "commit_seq", "row_count", "min_ts", "max_ts", "source", "created_by"], title="batches")


@app.command("ingest")
def ingest_cmd(
    view: Annotated[str, typer.Argument(help="View name, or NAME@VERSION.")],
    source: Annotated[str | None, typer.Argument(help="CSV or Parquet file (default: the view's declared source).")] = None,
    duplicates: Annotated[
        str | None, typer.Option("--duplicates", help="reject or keep-last (default: features.duplicate_policy).")
    ] = None,
) -> None:
    """Validate a source against the view and commit it as one immutable batch."""
    from rich.status import Status

    with open_box() as box:
        who = actor(box, "features.write")
        with Status("reading source", console=console, spinner="dots") if not state.json else _Null() as status:
            result = box.features.ingest(view, source, who.name, duplicate_policy=duplicates, progress=status.update)
    b = result.batch
    if state.json:
        emit_json({**b.as_dict(), "seconds": round(result.seconds, 3), "notes": result.notes})
        return
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    ok(f"{b.view}@{b.version}: batch {b.id} with {b.row_count:,} rows ({b.min_ts} … {b.max_ts}) in {result.seconds:.2f}s")


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _label: str) -> None:
        return None


@app.command("snapshot")
def snapshot_cmd() -> None:
    """Print the current snapshot id (pass it to --snapshot to pin reads)."""
    with open_box() as box:
        actor(box, "read")
        snap = box.features.snapshot()
    if state.json:
        emit_json({"snapshot": snap})
    else:
        console.print(snap)


@app.command("training-set")
def training_set_cmd(
    labels: Annotated[str, typer.Argument(help="Labels file (CSV or Parquet): entity keys, event timestamp, targets.")],
    features: Annotated[list[str], typer.Option("--features", "-F", help="view:field, view:* or view@2:field; repeatable.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Parquet file to write.")],
    snapshot: Annotated[int | None, typer.Option("--snapshot", help="Pin to this snapshot (default: now).")] = None,
    timestamp: Annotated[str | None, typer.Option("--timestamp", help="Label timestamp column (default: the only one).")] = None,
) -> None:
    """Build a point-in-time correct training set and write it as Parquet."""
    from mlbox.security.residency import Residency

    refs = [r for item in features for r in item.replace(",", " ").split()]
    with open_box() as box:
        who = actor(box, "train.run")
        where = Residency(box.db, box.audit).check_path(Path(out), "training set")
        with console.status("joining", spinner="dots"):
            ts = box.features.training_set(
                labels, refs, snapshot, timestamp=timestamp, out=Path(out), actor=who.name, protected=_disclosure(box, who)
            )
        # features.training_set (recorded by the store) does not take the destination: its region goes in its own entry
        box.audit.record(who.name, "privacy.destination", str(ts.path), {"purpose": "training set", "fingerprint": ts.fingerprint,
                                                                         **where.audit()})  # fmt: skip
    info = {
        "path": str(ts.path),
        "rows": ts.label_rows,
        "fingerprint": ts.fingerprint,
        "snapshot": ts.snapshot,
        "features": ts.features,
        "batches": ts.batches,
        "purged": ts.purged,
    }
    if state.json:
        emit_json(info)
    else:
        ok(f"wrote {ts.label_rows:,} rows × {len(ts.features)} features to {ts.path}")
        console.print(f"  fingerprint {ts.fingerprint}  snapshot {ts.snapshot}  batches {ts.batches}")
        for line in ts.purged:
            console.print(f"  [yellow]purged[/yellow] {line}")


@app.command("materialize")
def materialize_cmd(
    view: Annotated[str | None, typer.Argument(help="View name (default: all views).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Rebuild from every batch instead of only new ones.")] = False,
) -> None:
    """Load the latest value per entity into the online store (incremental since the last run)."""
    from rich.progress import BarColumn, Progress, TextColumn

    with open_box() as box:
        who = actor(box, "features.write")
        with Progress(TextColumn("materializing"), BarColumn(), TextColumn("{task.completed:,} rows"), console=console,
                      transient=True, disable=state.json) as progress:  # fmt: skip
            task = progress.add_task("rows", total=None)
            results = box.features.materialize(
                view, full=True if full else None, actor=who.name, progress=lambda n: progress.advance(task, n)
            )
    table([r.as_dict() for r in results], ["view", "mode", "batches", "rows", "through_seq", "seconds"])


def _parse_entities(values: list[str]) -> list[dict[str, str]]:
    rows = []
    for text in values:
        row = {}
        for part in text.split(","):
            key, sep, val = part.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"invalid --entity {text!r}", hint="write key=value, e.g. --entity customer_id=1001")
            row[key.strip()] = val.strip()
        rows.append(row)
    return rows


@app.command("get")
def get_cmd(
    features: Annotated[list[str], typer.Argument(help="view:field or view:* references.")],
    entity: Annotated[list[str], typer.Option("--entity", "-e", help="key=value[,key2=value2]; repeatable.")],
) -> None:
    """Read online feature values for one or more entities, with each view's event time and status."""
    with open_box() as box:
        who = actor(box, "features.read_online", scoped=True)  # before anything else, argument checks included
        require_scope(box, "view", [f.partition(":")[0].partition("@")[0] for f in features])
        rows = _parse_entities(entity)
        result = box.features.get_online_features(
            features, rows, with_timestamps=True, native=True, protected=_disclosure(box, who)
        )
    for name in [n for n in result if n.endswith(":__status")]:
        expired = [i for i, s in enumerate(result[name]) if s == "expired"]
        if expired and not state.json:
            view = name.removesuffix(":__status")
            console.print(f"[yellow]note:[/yellow] {view}: {len(expired)} entit{'y' if len(expired) == 1 else 'ies'} "
                          "older than the view's TTL; their values are null (status expired)")  # fmt: skip
    values = [c for c in result if ":__" not in c]  # the keys and the features asked for come first
    status = [c for c in result if c.endswith(":__status")]
    order = values + [c for c in result if ":__" in c]
    rows = [dict(zip(result, row, strict=True)) for row in zip(*result.values(), strict=True)]
    table(rows, order, default=values + status)  # event times with --wide


def _read_rows(path: Path, max_bytes: int) -> Any:
    """A JSON file's rows (a list of objects, or {"rows": [...]}); CSV and Parquet paths pass through (the
    ingest limits hold them). A JSON file is read whole, so it is held to `max_bytes` first."""
    from mlbox.types import printable, read_text_file

    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # ENAMETOOLONG, ELOOP, a NUL byte
        is_file = False
    if not is_file:
        raise UsageError(f"file {printable(path)} not found", hint="it must be a regular file")
    if path.suffix.lower() != ".json":
        return str(path)
    text = read_text_file(path, "push file", max_bytes=max_bytes)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{printable(path)}: not valid JSON ({printable(exc)})") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise UsageError(f"{printable(path)}: expected a list of row objects, or {{\"rows\": [...]}}")
    return rows


@app.command("push")
def push_cmd(
    view: Annotated[str, typer.Argument(help="View name, or NAME@VERSION.")],
    file: Annotated[Path, typer.Argument(help="Rows to push: a .csv, .parquet or .json file (a list of objects).")],
) -> None:
    """Write rows to the online store now; they reach the offline store at the next flush."""
    with open_box() as box:
        who = actor(box, "features.write")
        result = box.features.push(view, _read_rows(file, box.features.offline.limits.bytes), actor=who.name)
    if state.json:
        emit_json(result)
        return
    for note in result["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    flushed = f", flushed as batch {result['flushed_batch']}" if result["flushed_batch"] else ""
    ok(f"{result['view']}: {result['rows']:,} rows online; {result['staged']:,} staged for the next offline batch{flushed}")


@app.command("flush")
def flush_cmd(view: Annotated[str | None, typer.Argument(help="View name or NAME@VERSION (default: all).")] = None) -> None:
    """Commit pushed rows still staged as offline batches (one per view version)."""
    with open_box() as box:
        who = actor(box, "features.write")
        results = box.features.flush(view, who.name)
    table(results, ["view", "rows", "batch"])


@app.command("lineage")
def lineage_cmd(view: Annotated[str, typer.Argument(help="View name.")]) -> None:
    """Sources → batches → versions of a view, and the training sets built from it."""
    with open_box() as box:
        actor(box, "read")
        info = box.features.lineage(view)
    if state.json:
        emit_json(info)
        return
    from rich.tree import Tree

    tree = Tree(f"[bold]{info['view']}[/bold]")
    for v in info["versions"]:
        node = tree.add(f"version {v['version']}  [dim]{v['definition_hash'][:12]}[/dim]")
        for b in v["batches"]:
            node.add(f"batch {b['id']}  {b['rows']:,} rows  ← {b['source']}  [dim]{b['sha256'][:12]}[/dim]")
    for p in info["purges"]:
        tree.add(f"[yellow]purged[/yellow] {p['statement']}")
    sets = tree.add("training sets")
    for s in info["training_sets"]:
        sets.add(f"{s['fingerprint'][:16]}  snapshot {s['snapshot']}  {s['rows']:,} rows  {s['created_at']}")
    console.print(tree)


@app.command("sql")
def sql_cmd(
    query: Annotated[str, typer.Argument(help="One SELECT; each view is a relation (latest version), NAME_vN for others.")],
    snapshot: Annotated[int | None, typer.Option("--snapshot", help="Pin to this snapshot (default: now).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Rows to print at most.")] = 100,
) -> None:
    """Run read-only DuckDB SQL over the committed feature views."""
    with open_box() as box:
        who = actor(box, "read")
        columns, rows = box.features.sql(query, snapshot, protected=_disclosure(box, who))
    shown = [dict(zip(columns, r, strict=True)) for r in rows[:limit]]
    table(shown, columns)
    if len(rows) > limit and not state.json:
        console.print(f"[dim]… {len(rows) - limit} more rows (--limit)[/dim]")
