"""`mlbox keys`: encryption at rest — where the box's keys stand, rotating them, encrypting a plain box (admins)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from mlbox.cli._common import actor, console, done, open_box, record, settings, state

app = typer.Typer(help="Encryption at rest: the box's data keys (admins only).", no_args_is_help=True)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar fed by the store's (phase, done, total) callback; silent with --json."""
    if state.json:
        yield lambda phase, done_, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    bars: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as shown:  # fmt: skip

        def update(phase: str, completed: int, total: int) -> None:
            if phase not in bars:
                bars[phase] = shown.add_task(phase, total=total)
            shown.update(bars[phase], completed=completed, total=total)

        yield update


@app.command("status")
def status_cmd() -> None:
    """Show whether the box is encrypted, its keys, how many files each key encrypts, and each database's key."""
    from mlbox.store.rotate import status

    with open_box() as box:
        actor(box, "box.admin")
        found = status(box.settings)
    record(found, title="encryption at rest")


@app.command("rotate")
def rotate_cmd() -> None:
    """Make a new data key current, re-encrypt every file and both databases under it, retire the old key.

    Servers keep serving meanwhile. A rotation that was interrupted is finished by running this again.
    """
    from mlbox.store.rotate import rotate

    with open_box() as box:
        who = actor(box, "box.admin")
        with _progress() as progress:
            result = rotate(box.settings, who.name, progress=progress)
    verb = "finished the interrupted rotation" if result.resumed else "rotated"
    done(result.as_dict(), f"{verb}: key {result.current} is current; {result.files} file(s) and "
                           f"{len(result.databases)} database(s) re-encrypted; retired {', '.join(result.retired) or 'none'}")  # fmt: skip


@app.command("encrypt-box")
def encrypt_box_cmd() -> None:
    """Encrypt a plain box in place: batches, logs, labels, artifacts, meta.db and online.db.

    Refused while a server, worker or other mlbox command uses the box. An interrupted run is finished by running it again.
    """
    from mlbox.store.convert import encrypt_box, recover
    from mlbox.store.layout import BoxPaths

    conf = settings()
    recover(BoxPaths(conf.home))  # a kill between the keyring's commit and the databases' swap: finish the swap first
    with open_box() as box:
        who = actor(box, "box.admin")
    with _progress() as progress:  # the box is closed: conversion replaces meta.db under it
        result = encrypt_box(conf, who.name, progress=progress)
    done(result.as_dict(), f"encrypted {conf.home}: key {result.key}; {len(result.databases)} database(s), {result.files} file(s)")
    if result.unverified and not state.json:
        console.print(
            f"[yellow]warning:[/yellow] {len(result.unverified)} artifact(s) fail their checks and stay plaintext: "
            f"{', '.join(r[:12] for r in result.unverified)} (see `mlbox doctor`)"
        )
    if not state.json and not conf["encryption.master_key"]:
        console.print(f"  master key: {conf.home / 'keys' / 'master.key'} (keep a copy outside the box; without it nothing opens)")
