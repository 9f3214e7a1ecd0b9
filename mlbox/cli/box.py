"""Box-level commands: `init`, `doctor`, `backup`, `settings`, `version`."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import typer

from mlbox.cli._common import actor, console, emit_json, ok, open_box, os_user, record, settings, state, table
from mlbox.errors import MlboxError


def init(
    directory: Annotated[str, typer.Argument(help="Folder for the new project and box (default: the current one).")] = ".",
    template: Annotated[str, typer.Option("--template", "-t", help="Project template to copy.")] = "tabular-classification",
    residency: Annotated[
        str | None, typer.Option("--residency", help="ISO 3166 alpha-2 country the box's data must stay in, e.g. AE.")
    ] = None,
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help="Encrypt the box at rest: batches, logs, artifacts, meta.db and online.db.")
    ] = False,
) -> None:
    """Create a project from a template and its box; you become its admin."""
    from mlbox.box import Box
    from mlbox.security.residency import Residency, country_code

    code = country_code(residency) if residency is not None else None  # refused before anything is created
    dest = Path(directory).expanduser().resolve()
    box, files = Box.init_project(dest, template, os_user(), encrypt=encrypt)
    try:
        admin = next(u.name for u in box.identity.users() if u.role == "admin")
        if code is not None:
            Residency(box.db, box.audit).set_country(admin, code)
    finally:
        box.close()
    if state.json:
        emit_json({"home": str(dest), "template": template, "files": files, "admin": admin, "residency": code, "encrypted": encrypt})
        return
    ok(f"created {template} project in {dest} ({len(files)} files); {admin} is its admin")
    if encrypt:
        console.print(f"  encrypted at rest; master key: {dest / 'keys' / 'master.key'} (keep a copy outside the box)")
    console.print(f"  next: cd {directory} && mlbox doctor")


def doctor(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Fix what killed writers left: mark stale runs killed, delete unreferenced and temporary files, drop leftover tables.",
        ),
    ] = False,
) -> None:
    """Check Python, packages, GPU or CPU mode, disk, metadata integrity, the audit chain and crash leftovers."""
    from mlbox.doctor import repair as repair_box
    from mlbox.doctor import run_checks
    from mlbox.store.audit import AuditLog, load_or_create_key
    from mlbox.store.layout import BoxPaths, open_meta

    conf = settings()
    paths = BoxPaths(conf.home)
    fixed = None
    if repair:
        with open_box() as box:  # repairing writes: an admin's act, audited
            who = actor(box, "box.admin")
            fixed = repair_box(conf, box.paths, box.db, box.audit, who.name)
    db = audit = None
    if paths.exists():
        db = open_meta(paths, busy_timeout_ms=conf["store.busy_timeout_ms"], synchronous=conf["store.synchronous"],
                       master_key=conf["encryption.master_key"])
        audit = AuditLog(db, load_or_create_key(paths.audit_key))
    try:
        checks = run_checks(conf, paths, db, audit)
    finally:
        if db is not None:
            db.close()
    if state.json:
        report = [c.as_dict() for c in checks]
        emit_json({"repaired": fixed.as_dict(), "checks": report} if fixed else report)
    else:
        if fixed:
            ok(
                f"repaired: {len(fixed.killed_runs)} run(s) marked killed, {fixed.removed_artifacts} unreferenced artifact(s) "
                f"({fixed.removed_bytes / 1e6:.1f} MB) and {fixed.removed_temporary} temporary file(s) deleted, "
                f"{len(fixed.dropped_tables)} leftover table(s) dropped, "
                f"{fixed.signed_artifacts} unsigned artifact(s) given an HMAC after their sha256 verified"
            )
        style = {"ok": "green", "warn": "yellow", "fail": "red"}
        for c in checks:
            console.print(f"[{style[c.status]}]{c.status:>4}[/]  {c.name:<22} {c.detail}", soft_wrap=True)
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        raise MlboxError(f"{len(failed)} check(s) failed: {', '.join(failed)}")


def backup(
    dest: Annotated[str, typer.Argument(help="New folder to write the copy to (outside the box).")],
    with_master_key: Annotated[
        bool,
        typer.Option("--with-master-key", help="Encrypted box: copy keys/master.key too (the copy then opens on its own)."),
    ] = False,
) -> None:
    """Make a consistent copy of the box while other processes keep writing."""
    from rich.progress import Progress

    from mlbox.security.residency import Residency
    from mlbox.store.backup import backup_box

    with open_box() as box:
        who = actor(box, "box.admin")
        where = Residency(box.db, box.audit).check_path(Path(dest), "backup")
        with Progress(console=console, transient=True, disable=state.json) as progress:
            task = progress.add_task("backing up", total=None)
            report = backup_box(box.paths.home, Path(dest).expanduser(), lambda label, n: progress.update(task, advance=n, description=label),
                                include_master_key=with_master_key)  # fmt: skip
        box.audit.record(who.name, "box.backup", str(report.dest), {"files": report.files, "bytes": report.bytes,
                                                                    "encrypted": report.encrypted, "master_key": report.master_key, **where.audit()})  # fmt: skip
    result = {
        "dest": str(report.dest),
        "databases": report.databases,
        "files": report.files,
        "bytes": report.bytes,
        "seconds": round(report.seconds, 3),
        "encrypted": report.encrypted,
        "master_key": report.master_key,
    }
    if state.json:
        emit_json(result)
    else:
        ok(f"backed up to {report.dest}: {report.databases} databases, {report.files} files, {report.bytes / 1e6:.1f} MB in {report.seconds:.2f}s")
        if report.encrypted and not report.master_key:
            console.print("  encrypted copy without keys/master.key: it opens only with the master key (copy it back or set encryption.master_key)")


def settings_cmd() -> None:
    """List every setting with its value here, default and help text."""
    from mlbox.config import SETTINGS

    conf = settings()
    rows = [
        {"name": s.name, "value": conf[s.name], "default": s.default, "env": s.env_var, "help": s.help} for s in SETTINGS
    ]
    table(rows, ["name", "value", "default", "help"], title=f"settings of {conf.home} ({conf.source or 'defaults'})")


def version() -> None:
    """Print mlbox's version and Python's."""
    from mlbox._version import __version__

    if state.json:
        emit_json({"mlbox": __version__, "python": platform.python_version()})
    else:
        console.print(f"mlbox {__version__} (Python {platform.python_version()})")


def whoami() -> None:
    """Show which box user you act as, with which role."""
    with open_box() as box:
        who = actor(box, "read")  # every role may; a bad, revoked or expired token is refused
    record({"user": who.name, "role": who.role, "via": who.via, "box": str(box.paths.home)})


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(doctor)
    app.command()(backup)
    app.command("settings")(settings_cmd)
    app.command()(version)
    app.command()(whoami)
