"""The prediction log as a reader may see it: a page of records with the protected inputs masked or left out.

A logged record keeps the input rows the model was sent, so a model fed a protected feature field
(pii or restricted; its registry lineage's `feature_refs` names the field) logs that field's
values. Reading the log is `read`; a reader without `features.read_pii` gets those inputs as
every other read path gives them (`roles.disclosure`): masked (`***` for strings, null otherwise)
or, under `privacy.protected_reads = refuse`, left out of the rows (the page names them). The columns
hidden are those of every model on the page and of the deployment's current models together: a
shadow's record holds its primary's inputs, whatever the shadow itself was fed. They are hidden in
the entity too (a sticky key can be a protected input), and an error text that names one is withheld
after its status, since a validation error quotes the value sent. A model the registry no longer
knows has unknown inputs: all of them, its entities and its errors are hidden from such a reader.
`mlbox deploy log` and the TUI's prediction log (through the console) both read this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlbox.errors import NotFound
from mlbox.features.privacy import masked_value, protected
from mlbox.monitor.logpage import page
from mlbox.security.roles import disclosure

if TYPE_CHECKING:
    from mlbox.box import Box
    from mlbox.types import Actor

EVERY = "*"  # hide every input of a model whose lineage is unknown


def prediction_page(
    box: Box, actor: Actor, deployment: str, *, limit: int = 50, before: str | None = None,
    variant: str | None = None, errors: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One page of the deployment's log, newest first, as `actor` may read it."""
    d = box.deployments.get(deployment)  # an unknown deployment is named, not an empty page
    got = page(box.db, box.paths.home, deployment, limit=limit, before=before, variant=variant, errors=errors)
    how = disclosure(actor, str(box.settings["privacy.protected_reads"]))
    shown: set[str] = set()
    if how != "raw":
        # one set for every record: a shadow's record holds its primary's inputs, whatever the shadow was fed
        models = {str(r["model"]) for r in got.records} | {m for m in (d.primary_model, d.canary_model, d.shadow_model) if m}
        columns: dict[str, str] = {}
        for found in protected_inputs(box, models).values():
            columns.update(found)
        for r in got.records:
            shown |= hide(r, columns, how)
    return {
        "deployment": deployment, "records": got.records, "next": got.next, "total": got.total, "files": got.files,
        "disclosure": how, "masked": sorted(shown) if how == "mask" else [], "refused": sorted(shown) if how == "refuse" else [],
    }  # fmt: skip


def protected_inputs(box: Box, models: set[str]) -> dict[str, dict[str, str]]:
    """model ref -> {input column: dtype} of its inputs fed by a protected field ({"*": ""}: unknown lineage)."""
    if not models:
        return {}
    # the protected fields alone (`locations` would also scan every recorded training set, on each page read)
    guarded = {f"{v.ref}:{name}": dtype for v in box.features.catalog.versions() for name, dtype in protected(v).items()}
    out: dict[str, dict[str, str]] = {}
    for ref in models:
        try:
            lineage = box.registry.get(ref).lineage or {}
        except NotFound:
            out[ref] = {EVERY: ""}
            continue
        refs: dict[str, str] = dict(lineage.get("feature_refs") or {})
        out[ref] = {column: guarded[field] for column, field in refs.items() if field in guarded}
    return out


def hide(record: dict[str, Any], columns: dict[str, str], how: str) -> set[str]:
    """Mask (or, refusing, drop) `columns` in the record's input rows and entity in place, and withhold an error
    text that names one (a validation error quotes the value sent); the columns it hid."""
    if not columns:
        return set()
    done: set[str] = set()
    for key in ("inputs", "entity"):
        rows = record.get(key)
        if rows is None:
            continue
        if not isinstance(rows, list):  # not the rows a server logs: nothing of it is shown
            record[key] = None
            done.add(key)
            continue
        for row in rows:
            if isinstance(row, dict):
                done |= _hide_row(row, columns, how)
    error = record.get("error")
    if isinstance(error, str):
        named = sorted(c for c in columns if c != EVERY and c in error)
        if named or EVERY in columns:
            head = error.split(":", 1)[0]
            record["error"] = f"{head}: (withheld: the message may quote a protected input)"
            done |= set(named)
    return done


def _hide_row(row: dict[str, Any], columns: dict[str, str], how: str) -> set[str]:
    done = set()
    for name in list(row):
        if name in columns or EVERY in columns:
            done.add(name)
            if how == "refuse":
                del row[name]
            else:
                row[name] = masked_value(columns.get(name, ""))
    return done
