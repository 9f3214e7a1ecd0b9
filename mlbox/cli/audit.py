"""`mlbox audit`: read and verify the tamper-evident audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlbox.cli._common import actor, console, emit_json, open_box, state, table
from mlbox.errors import StoreError

app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)


@app.command("list")
def audit_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N entries.")] = 50,
    user: Annotated[str | None, typer.Option("--actor", help="Only this actor's entries.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Action or prefix, e.g. auth. or features.ingest.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Only entries about this target.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO timestamp, e.g. 2026-11-01.")] = None,
) -> None:
    """List audit entries, newest first."""
    with open_box() as box:
        actor(box, "audit.read")
        entries = box.audit.entries(limit=limit, actor=user, action=action, target=target, since=since)
    table([e.as_dict() for e in entries], ["seq", "ts", "actor", "action", "target", "details"])


@app.command("verify")
def audit_verify() -> None:
    """Check the whole hash chain; exits non-zero naming the first edited, deleted or reordered entry."""
    with open_box() as box:
        actor(box, "audit.read")
        result = box.audit.verify()
    if state.json:
        emit_json({"ok": result.ok, "checked": result.checked, "bad_entry": result.bad_seq, "problem": result.problem})
    if not result.ok:
        where = f" at entry {result.bad_seq}" if result.bad_seq is not None else ""
        raise StoreError(f"audit log verification failed{where}: {result.problem}")
    if not state.json:
        console.print(f"[green]✓[/green] audit chain intact: {result.checked} entries verified")


@app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the bundle (JSON).")],
    since: Annotated[str | None, typer.Option("--since", help="ISO time; entries at or after it.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time; entries before it.")] = None,
) -> None:
    """Write a signed evidence bundle (entries, chain link, head) an auditor verifies without mlbox."""
    from mlbox.security.residency import Residency
    from mlbox.store.evidence import export

    with open_box() as box:
        who = actor(box, "audit.read")
        where = Residency(box.db, box.audit).check_path(out, "audit export")
        evidence = export(box.audit, box.paths.keys / "audit-sign.key", out, since=since, until=until)
        box.audit.record(
            who.name,
            "audit.export",
            str(out),
            {"first_seq": evidence.first_seq, "last_seq": evidence.last_seq, "fingerprint": evidence.fingerprint, **where.audit()},
        )
    if state.json:
        emit_json(
            {
                "path": str(evidence.path),
                "first_seq": evidence.first_seq,
                "last_seq": evidence.last_seq,
                "fingerprint_sha256": evidence.fingerprint,
            }
        )
        return
    console.print(
        f"[green]✓[/green] wrote {evidence.path}: entries {evidence.first_seq}..{evidence.last_seq}, signed"
    )
    console.print(f"signing key fingerprint (SHA-256): {evidence.fingerprint}")
    console.print("verify with: python3 docs/tools/verify_evidence.py BUNDLE --public-key-fingerprint FINGERPRINT")
