"""The prediction log as a reader may see it: a page of records with the protected inputs masked or left out.

A logged record keeps the input rows the model was sent, so a model fed a protected feature field
(pii or restricted; its registry lineage's `feature_refs` names the field) logs that field's
values. Reading the log is `read`; a reader without `features.read_pii` gets those inputs as
every other read path gives them (`roles.disclosure`): masked (`***` for strings, null otherwise)
or, under `privacy.protected_reads = refuse`, left out of the rows (the page names them). A model
the registry no longer knows has unknown inputs: all of them are hidden from such a reader.
`mlbox deploy log` and the TUI's prediction log (through the console) both read this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlbox.errors import NotFound
from mlbox.features.privacy import locations, masked_value
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
    box.deployments.get(deployment)  # an unknown deployment is named, not an empty page
    got = page(box.db, box.paths.home, deployment, limit=limit, before=before, variant=variant, errors=errors)
    how = disclosure(actor, str(box.settings["privacy.protected_reads"]))
    hidden: dict[str, dict[str, str]] = {}
    if how != "raw":
        hidden = protected_inputs(box, {str(r["model"]) for r in got.records})
    shown: set[str] = set()
    for r in got.records:
        shown |= hide(r, hidden.get(str(r["model"]), {}), how)
    return {
        "deployment": deployment, "records": got.records, "next": got.next, "total": got.total, "files": got.files,
        "disclosure": how, "masked": sorted(shown) if how == "mask" else [], "refused": sorted(shown) if how == "refuse" else [],
    }  # fmt: skip


def protected_inputs(box: Box, models: set[str]) -> dict[str, dict[str, str]]:
    """model ref -> {input column: dtype} of its inputs fed by a protected field ({"*": ""}: unknown lineage)."""
    if not models:
        return {}
    guarded = {f"{r['view']}:{r['field']}": str(r["dtype"]) for r in locations(box.features.catalog, {})["fields"]}
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
    """Mask (or, refusing, drop) `columns` in the record's input rows in place; the columns it hid."""
    rows = record.get("inputs")
    if not columns:
        return set()
    if not isinstance(rows, list):  # not the rows a server logs: nothing of it is shown
        record["inputs"] = None
        return {"inputs"}
    done: set[str] = set()
    for row in rows:
        if not isinstance(row, dict):
            continue
        for name in list(row):
            if name in columns or EVERY in columns:
                done.add(name)
                if how == "refuse":
                    del row[name]
                else:
                    row[name] = masked_value(columns.get(name, ""))
    return done
