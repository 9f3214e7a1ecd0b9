"""`mlbox models`: the registry — list, show, promote, archive, diff, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlbox.cli._common import actor, console, done, emit_json, open_box, record, state, table
from mlbox.errors import UsageError

app = typer.Typer(help="Model registry: versions, aliases, lineage, export.", no_args_is_help=True)


@app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    archived: Annotated[bool, typer.Option("--archived", help="Include archived versions.")] = False,
) -> None:
    """Registered versions with aliases and headline metrics."""
    with open_box() as box:
        actor(box, "read")
        versions = box.registry.versions(name, include_archived=archived)
    rows = [v.summary() for v in versions]
    metric_cols = list(dict.fromkeys(k for v in versions for k, m in v.metrics.items() if isinstance(m, float)))[:4]
    columns = ["model", "flavor", "task", "aliases", "archived", *metric_cols, "created_at"]
    table(rows, columns, default=["model", "task", "aliases", *metric_cols[:2]])  # the rest with --wide


@app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="NAME:VERSION, NAME:staging, NAME:production or NAME.")]) -> None:
    """A version's signature, metrics, artifacts (sha256) and lineage."""
    with open_box() as box:
        actor(box, "read")
        v = box.registry.get(ref)
    if state.json:
        emit_json(v.__dict__)
        return
    record(
        {
            "model": v.ref,
            "aliases": ", ".join(v.aliases) or "-",
            "flavor": v.flavor,
            "task": v.task,
            "run": v.run_id,
            "created": f"{v.created_at} by {v.created_by}",
            "archived": v.archived_at or "-",
            "onnx max |diff|": f"{v.onnx_max_abs_diff} (tolerance {v.onnx_tolerance})",
            "metrics": v.metrics,
        },
        title=v.ref,
    )
    cols = [{**c, "levels": ", ".join(c["levels"][:6]) + (" …" if len(c["levels"]) > 6 else "")} for c in v.signature["columns"]]
    table(cols, ["name", "kind", "dtype", "levels", "required", "nullable"], title="signature")
    table([{"file": k, **m} for k, m in v.artifacts.items()], ["file", "sha256", "size"], title="artifacts")
    lineage = {k: v.lineage.get(k) for k in ("run_id", "dataset_fingerprint", "feature_views", "batches", "snapshot",
                                              "data_source", "code_rev", "code_dirty", "env_hash")}  # fmt: skip
    record(lineage, title="lineage")


@app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to promote.")],
    to: Annotated[str, typer.Option("--to", help="staging or production.")] = "staging",
    expect: Annotated[
        str | None, typer.Option("--expect", help="Only if the alias is now held by this version ('none' = unset).")
    ] = None,
) -> None:
    """Point an alias at a version (compare-and-set: a concurrent move makes this fail, never overwrite)."""
    with open_box() as box:
        who = actor(box, "models.promote")
        name = ref.partition(":")[0]
        if expect is None:
            expected = box.registry.holder(name, to) if to in ("staging", "production") else None
        elif expect == "none":
            expected = None
        elif expect.isdigit():
            expected = int(expect)
        else:
            raise UsageError(f"--expect must be a version number or 'none', got {expect!r}")
        v = box.registry.set_alias(ref, to, who.name, expected)
    done(v.summary(), f"{v.ref} is now {to}")


@app.command("archive")
def models_archive(ref: Annotated[str, typer.Argument(help="NAME:VERSION to archive.")]) -> None:
    """Archive a version: it loses its aliases and cannot be promoted."""
    with open_box() as box:
        v = box.registry.archive(ref, actor(box, "models.promote").name)
    done(v.summary(), f"archived {v.ref}")


@app.command("diff")
def models_diff(a: Annotated[str, typer.Argument(help="First NAME:VERSION.")], b: Annotated[str, typer.Argument(help="Second.")]) -> None:
    """Differences between two versions: metrics, features, data, code, params."""
    with open_box() as box:
        actor(box, "read")
        d = box.registry.diff(a, b)
    if state.json:
        emit_json(d)
        return
    rows = [{"": k, d["a"]: va, d["b"]: vb} for k, (va, vb) in d["metrics"].items()]
    rows += [{"": k, d["a"]: str(d[k][0])[:40], d["b"]: str(d[k][1])[:40]} for k in ("flavor", "dataset", "feature_views", "code")]
    rows += [{"": f"param {k}", d["a"]: va, d["b"]: vb} for k, (va, vb) in d["params"].items()]
    table(rows, ["", d["a"], d["b"]])
    for key in ("features_added", "features_removed", "features_changed"):
        if d[key]:
            console.print(f"{key.replace('_', ' ')}: {', '.join(d[key])}")


@app.command("export")
def models_export(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION to export.")],
    dest: Annotated[str, typer.Argument(help="Destination: a .onnx file or a folder.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or native.")] = "onnx",
) -> None:
    """Copy a version's ONNX or native files out (verified against their sha256 and HMAC; residency checked)."""
    from mlbox.security.residency import Residency

    with open_box() as box:
        who = actor(box, "read")
        where = Residency(box.db, box.audit).check_path(Path(dest), "models export")
        paths = box.registry.export(ref, fmt, Path(dest).expanduser(), actor=who.name, destination=where.audit())
    done({"files": [str(p) for p in paths]}, f"exported {len(paths)} file(s) to {dest}")
