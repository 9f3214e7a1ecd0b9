"""The right of access: `mlbox privacy export --entity KEY=VALUE --out FILE`, every stored value about one subject.

The export is one JSON document (format `mlbox-subject-export/1`, documented in docs/privacy.md):
the subject's rows of every version of every view whose entity has a given key (with event
times and the batch each came from), the online store's current values, the logged predictions
of their requests and the labels of those requests, the training sets that read a batch holding
their rows, the model versions trained on those sets, and earlier erasures of the same subject.
Protected fields are included unmasked: the subject has a right to them. The file is written
0600 (plain wherever the user asks, sealed only inside an encrypted box's stores: mlbox.store.crypt
decides by path); the box keeps only the audit entry `privacy.export` (pseudonym, counts, no values).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox import clock
from mlbox.features.offline import OfflineStore
from mlbox.features.rewrite import key_filter, plan, select_matching
from mlbox.privacy import certificate
from mlbox.privacy.erase import affected_sets_and_models, typed_subject, views_with
from mlbox.serve.predlog import subject as logs
from mlbox.store import crypt

if TYPE_CHECKING:
    from mlbox.box import Box
    from mlbox.features.catalog import Catalog

FORMAT = "mlbox-subject-export/1"


def plain(value: Any) -> Any:
    """A JSON value: timestamps and dates as ISO-8601, decimals and NaN as numbers or null, JSON text parsed."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return plain(value.item())
    return value


def _parsed(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _offline_rows(catalog: Catalog, offline: OfflineStore, name: str, subject: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    con = offline.connect()
    try:
        for v in catalog.versions(name):
            drop = key_filter(v, subject)
            files = offline.files(v)
            if drop is None or not files:
                continue
            rows: list[dict[str, Any]] = []
            for batch, path in files:
                names, found = select_matching(con, path, drop)
                rows += [{**dict(zip(names, plain(list(r)), strict=True)), "__batch": batch.id} for r in found]
            if rows:
                rows.sort(key=lambda r: str(r.get(v.view.timestamp)))
                out.append({"view": v.ref, "entity": v.entity.name, "timestamp": v.view.timestamp, "rows": rows})
    finally:
        con.close()
    return out


def collect(box: Box, given: Mapping[str, str]) -> dict[str, Any]:
    """The export document of the subject named by `given` ({key: text}); reads only."""
    fs = box.features
    subject = typed_subject(box, given)
    features, batch_ids = [], set()
    for name in views_with(box, subject):
        features += _offline_rows(fs.catalog, fs.offline, name, subject)
        batch_ids |= {b.batch for b in plan(fs.catalog, fs.offline, name, lambda v: key_filter(v, subject))}
    online = []
    for v in fs.catalog.versions():
        if set(v.entity.join_keys) & set(subject):
            rows = fs.online.rows_for(v, subject)
            if rows:
                online.append({"view": v.ref, "rows": plain(rows)})
    records, labels = logs.read(box.db, box.paths.home, subject)
    for r in records:
        for key in ("entity", "inputs", "outputs"):
            r[key] = _parsed(r[key])
    sets, models = affected_sets_and_models(box, batch_ids)
    pseudonym = certificate.subject_id(box.audit.key, subject)
    return {
        "format": FORMAT,
        "exported_at": clock.iso(),
        "box": box.settings.project_name(),
        "subject": dict(subject),
        "snapshot": fs.snapshot(),
        "features": features,
        "online": online,
        "predictions": plain(records),
        "labels": plain(labels),
        "training_sets": sets,
        "models": [{k: v for k, v in m.items() if k != "why"} for m in models],
        "erasures": [
            {"id": r["id"], "erased_at": r["created_at"], "snapshot": r["snapshot"]}
            for r in box.db.query("SELECT id, created_at, snapshot FROM erasures WHERE subject = ? ORDER BY id", (pseudonym,))
        ],
    }


def counts(document: Mapping[str, Any]) -> dict[str, int]:
    return {
        "feature_rows": sum(len(v["rows"]) for v in document["features"]),
        "online_rows": sum(len(v["rows"]) for v in document["online"]),
        "predictions": len(document["predictions"]),
        "labels": len(document["labels"]),
        "training_sets": len(document["training_sets"]),
        "models": len(document["models"]),
    }


def export(box: Box, given: Mapping[str, str], out: Path, *, actor: str) -> dict[str, Any]:
    """Write the subject's export to `out` (0600) and audit it; the counts written."""
    document = collect(box, given)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))  # 0600 before a byte is written
    crypt.write_bytes(tmp, (json.dumps(document, indent=1, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
    os.replace(tmp, out)
    found = counts(document)
    pseudonym = certificate.subject_id(box.audit.key, document["subject"])
    box.audit.record(actor, "privacy.export", pseudonym[:16], {"keys": sorted(document["subject"]), **found, "out": str(out)})
    return {"path": str(out), **found}
