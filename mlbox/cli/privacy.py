"""`mlbox privacy`: where personal data lives (report), retention (purge) and the records of processing (record)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlbox.cli import residency as residency_commands
from mlbox.cli._common import actor, console, done, emit_json, ok, open_box, record, state, table

app = typer.Typer(help="Personal data: where protected (pii/restricted) fields and their derivatives live.", no_args_is_help=True)
residency_commands.register(app)  # residency, region, transfer (mlbox/cli/residency.py)

# section -> (title, columns)
_SECTIONS: dict[str, tuple[str, list[str]]] = {
    "fields": ("protected fields", ["view", "field", "dtype", "pii", "classification"]),
    "online_tables": ("online store tables holding them", ["view", "table", "fields", "rows"]),
    "training_sets": ("training sets that include them", ["fingerprint", "snapshot", "fields", "rows", "created_at", "created_by"]),
    "models": ("model versions trained on them", ["model", "training_set", "fields", "inputs", "archived"]),
    "profiles": ("reference profiles with their category counts", ["model", "column", "field", "levels"]),
    "deployments": ("deployments serving those models (prediction logs hold the inputs)",
                    ["deployment", "model", "role", "logged_inputs", "prediction_log", "log_files"]),
}  # fmt: skip


@app.command("report")
def report_cmd() -> None:
    """List where personal data lives: protected view fields, online tables, training sets, models, profiles, prediction logs."""
    from mlbox.privacy.report import report

    with open_box() as box:
        actor(box, "read")
        found = report(box)
    if state.json:
        emit_json(found)
        return
    for section, (title, columns) in _SECTIONS.items():
        rows = [{k: ", ".join(v) if isinstance(v, list) else v for k, v in r.items()} for r in found[section]]
        if rows:
            table(rows, columns, title=title)
        else:
            console.print(f"[dim]{title}: none[/dim]")


@app.command("purge")
def purge_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be removed; change nothing.")] = False,
) -> None:
    """Remove feature rows, logged predictions and labels older than their retention (audited as privacy.purge)."""
    from mlbox.privacy.retention import purge

    with open_box() as box:
        who = actor(box, "box.admin")
        result = purge(box, who.name, dry_run=dry_run)
    if state.json:
        emit_json(result.as_dict())
        return
    columns = ["store", "target", "retention", "cutoff", "rows", "files", "online_rows"]
    table([r.as_dict() for r in result.removals], columns, title="would remove" if dry_run else "removed")
    if result.unlimited:
        console.print(f"[dim]no retention declared (kept): {', '.join(result.unlimited)}[/dim]")
    verb = "would remove" if dry_run else "removed"
    ok(f"{verb} {result.rows:,} row(s) in {result.files} file(s) older than their retention")


@app.command("record")
def record_cmd(
    markdown: Annotated[bool, typer.Option("--markdown", help="Markdown for a DPO instead of tables (JSON: mlbox --json).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the record to this file (Markdown with --markdown, else JSON).")] = None,
) -> None:
    """The records of processing: purposes, legal bases, retention, residency, recipients, exports, last erasure and purge."""
    from mlbox.privacy import record as rec

    with open_box() as box:
        who = actor(box, "read")
        data = rec.record(box)
        if out is not None:
            written = rec.write(box, data, out, "markdown" if markdown else "json", who.name)
    if out is not None:
        done({"out": str(written), "format": "markdown" if markdown else "json"}, f"wrote the record of processing to {written}")
    elif state.json:
        emit_json(data)
    elif markdown:
        print(rec.markdown(data), end="")
    else:
        record(data["box"], title="record of processing")
        for section, columns in rec.COLUMNS.items():
            rows = [{k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in data[section]]
            table(rows, columns, title=section.replace("_", " "))
        for key in ("last_erasure", "last_purge"):
            console.print(f"{key.replace('_', ' ')}: {rec.event(data[key])}")


@app.command("erase")
def erase_cmd(
    entity: Annotated[list[str], typer.Option("--entity", help="The subject's join key, KEY=VALUE (repeat for several keys).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be removed, where, row counts; change nothing.")] = False,
    certificate: Annotated[Path | None, typer.Option(
        "--certificate", help="Also write the signed certificate, with the subject's clear keys, here (keep it outside the box)."
    )] = None,
) -> None:
    """Erase one data subject from every store; writes a signed erasure certificate (audited as privacy.erase)."""
    from mlbox.privacy import certificate as cert
    from mlbox.privacy.erase import erase, parse_entity

    with open_box() as box:
        who = actor(box, "box.admin")  # before any other work, bad input included
        given = parse_entity(entity)
        document = erase(box, given, actor=who.name, dry_run=dry_run)
    if certificate is not None and not dry_run:
        cert.write(certificate, document, given)
    if state.json:
        emit_json(document)
        return
    payload = document["payload"]
    removed = payload["removed"]
    rows = [{"store": "offline", "where": r["view"], "path": r["path"], "rows": r["removed"]} for r in removed["offline"]]
    rows += [{"store": "online", "where": r["view"], "path": f"online.db:{r['table']}", "rows": r["rows"]} for r in removed["online"]]
    rows += [{"store": "predictions", "where": r["deployment"], "path": r["path"], "rows": r["records"]} for r in removed["predictions"]]
    rows += [{"store": "labels", "where": r["deployment"], "path": r["path"], "rows": r["rows"]} for r in removed["labels"]]
    rows += [{"store": "source file", "where": "", "path": r["path"], "rows": r["rows"]} for r in removed["source_files"]]
    rows += [{"store": "log", "where": "", "path": r["path"], "rows": r["lines"]} for r in removed["log_lines"]]
    table(rows, ["store", "where", "path", "rows"], title="would remove" if dry_run else "removed")
    for m in payload["models_to_review"]:
        console.print(f"[yellow]model {m['model']}[/yellow]: {m['why']}")
    for r in payload["retained"]:
        console.print(f"[yellow]kept[/yellow] {r['where']}: {r['why']}")
    for b in payload["out_of_reach"]:
        console.print(f"[yellow]out of reach[/yellow]: backup {b['path']} made {b['made_at']} by {b['made_by']}")
    total = sum(payload["totals"].values())
    if dry_run:
        ok(f"dry run: {total:,} row(s) would be removed; nothing was changed")
        return
    ok(f"erased subject {payload['subject']['pseudonym'][:16]}: {total:,} row(s) removed at snapshot {payload['snapshot']}")
    console.print(f"signing key fingerprint (SHA-256): {payload['public_key']['fingerprint_sha256']}")
    if certificate is not None:
        console.print(f"certificate: {certificate}; verify with: python3 docs/tools/verify_certificate.py {certificate} "
                      f"--public-key-fingerprint {payload['public_key']['fingerprint_sha256']}")  # fmt: skip


@app.command("export")
def export_cmd(
    entity: Annotated[list[str], typer.Option("--entity", help="The subject's join key, KEY=VALUE (repeat for several keys).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the subject's data (JSON, mode 0600).")],
) -> None:
    """Right of access: every stored value, prediction and label about one subject, as portable JSON (audited)."""
    from mlbox.privacy.access import export
    from mlbox.privacy.erase import parse_entity

    with open_box() as box:
        who = actor(box, "box.admin")  # before any other work, bad input included
        found = export(box, parse_entity(entity), out, actor=who.name)
    done(found, f"wrote {found['feature_rows']} feature row(s), {found['predictions']} prediction(s) and "
                f"{found['labels']} label(s) about the subject to {out}")  # fmt: skip
