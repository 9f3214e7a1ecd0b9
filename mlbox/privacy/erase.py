"""The right to erasure: `mlbox privacy erase --entity KEY=VALUE`, removing one subject from every store.

In order: staged pushes of the views concerned are flushed (so they are offline batches), every
view whose entity has a given join key is rewritten without the subject's rows (mlbox.features.rewrite:
new immutable batches under a new snapshot, old files unlinked), the online tables lose the
subject's rows, the prediction log loses the subject's requests and the label batches the labels
of those requests (mlbox.serve.predlog.subject), the project's data files inside the box lose
their rows (mlbox.privacy.sources), and log lines holding one of the subject's protected string
values are redacted. Then meta.db and online.db are vacuumed (freed pages held the deleted rows)
and their WAL checkpointed and truncated. What cannot be changed is listed, never silently kept:
backups (`box.backup` audit entries), the model versions trained on training sets that read the
subject's batches (they may need retraining) and reference profiles counting a protected level
of the subject. The signed certificate (mlbox.privacy.certificate) is stored in `erasures` and
the audit log gets one `privacy.erase` entry, both naming the subject only by its pseudonym.
A dry run reads and counts everything and writes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlbox import clock
from mlbox.errors import UsageError, ValidationError
from mlbox.features.online import coerce_key, table_name
from mlbox.features.pit import q
from mlbox.features.privacy import protected
from mlbox.features.rewrite import key_filter, rewrite_view, select_matching
from mlbox.privacy import certificate, sources
from mlbox.serve.predlog import subject as logs
from mlbox.store.evidence import canonical
from mlbox.types import check_name

if TYPE_CHECKING:
    from mlbox.box import Box
    from mlbox.store.sqlite import Database

SIGNING_KEY = "audit-sign.key"


def parse_entity(pairs: Sequence[str]) -> dict[str, str]:
    """`["customer_id=123", ...]` -> {key: text}; a key given twice, or no `=`, is a UsageError."""
    if not pairs:
        raise UsageError("name the subject with --entity KEY=VALUE", hint="e.g. --entity customer_id=123")
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not value:
            raise UsageError(f"invalid --entity {pair!r}", hint="write KEY=VALUE, e.g. customer_id=123")
        check_name(key.strip(), "join key")
        if key.strip() in out:
            raise UsageError(f"join key {key.strip()!r} given twice")
        out[key.strip()] = value
    return out


def typed_subject(box: Box, given: Mapping[str, str]) -> dict[str, Any]:
    """The subject's keys typed as the entities declare them (int64 keys become integers)."""
    types: dict[str, str] = {}
    for entity in box.features.catalog.entities():
        for key, dtype in entity.join_keys.items():
            types.setdefault(key, dtype)
    unknown = [k for k in given if k not in types]
    if unknown:
        known = ", ".join(sorted(types)) or "none yet"
        raise UsageError(f"no entity has the join key {unknown[0]!r}", hint=f"join keys in this box: {known}")
    return {k: coerce_key(v, types[k], k) for k, v in given.items()}


def views_with(box: Box, subject: Mapping[str, Any]) -> list[str]:
    """Views any version of which has an entity with one of the subject's keys."""
    return sorted({v.name for v in box.features.catalog.versions() if set(v.entity.join_keys) & set(subject)})


def _protected_values(box: Box, name: str, subject: Mapping[str, Any]) -> dict[str, set[str]]:
    """`view@version:field` -> the subject's values of its protected string fields (to find them elsewhere)."""
    fs = box.features
    out: dict[str, set[str]] = {}
    con = fs.offline.connect()
    try:
        for v in fs.catalog.versions(name):
            drop = key_filter(v, subject)
            strings = [f for f, dtype in protected(v).items() if dtype == "string"]
            if drop is None or not strings:
                continue
            for _, path in fs.offline.files(v):
                _, rows = select_matching(con, path, drop, ", ".join(q(f) for f in strings))
                for i, field in enumerate(strings):
                    found = {str(r[i]) for r in rows if r[i] is not None}
                    if found:
                        out.setdefault(f"{v.ref}:{field}", set()).update(found)
    finally:
        con.close()
    return out


def affected_sets_and_models(box: Box, batch_ids: set[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training sets that read one of these batches (or a batch they replaced), and the models trained on them."""
    ids, frontier = set(batch_ids), set(batch_ids)
    while frontier:  # batches rewritten earlier (retention, an earlier erasure) hold the same rows
        rows = box.db.query(
            f"SELECT replaces FROM feature_batches WHERE id IN ({','.join('?' * len(frontier))}) AND replaces IS NOT NULL",
            sorted(frontier),
        )
        frontier = {int(r["replaces"]) for r in rows} - ids
        ids |= frontier
    sets = box.features.catalog.training_sets_using(ids) if ids else []
    fingerprints = {s["fingerprint"] for s in sets}
    models = []
    for mv in box.registry.versions():
        lineage = mv.lineage or {}
        used = {int(b) for b in lineage.get("batches") or [] if str(b).isdigit()}
        if lineage.get("dataset_fingerprint") in fingerprints or used & ids:
            models.append(
                {
                    "model": mv.ref,
                    "training_set": lineage.get("dataset_fingerprint"),
                    "archived": bool(mv.archived_at),
                    "why": "trained on a training set that read a batch holding the subject's rows: retrain to forget them",
                }
            )
    return [{"fingerprint": s["fingerprint"], "snapshot": s["snapshot"], "created_at": s["created_at"]} for s in sets], models


def _profiles(box: Box, values: Mapping[str, set[str]]) -> list[dict[str, Any]]:
    """Reference profiles whose categorical entry for a protected field counts one of the subject's values."""
    out = []
    for mv in box.registry.versions():
        refs: dict[str, str] = dict((mv.lineage or {}).get("feature_refs") or {})
        fed = {c: r for c, r in refs.items() if r in values}
        if not fed:
            continue
        entries = (box.registry.profile(mv.ref) or {}).get("features") or {}
        for column, ref in sorted(fed.items()):
            levels = (entries.get(column) or {}).get("levels") or {}
            hits = [lvl for lvl in levels if lvl in values[ref]]
            if hits:
                out.append(
                    {
                        "where": f"reference profile of {mv.ref}",
                        "column": column,
                        "count": sum(int(levels[h]) for h in hits),
                        "why": "the frozen monitoring baseline of a registered version keeps category counts; "
                        "not edited (its hash is its identity): retraining after the erasure replaces it",
                    }
                )
    return out


def _redact_logs(folder: Path, needles: set[str], home: Path, dry_run: bool) -> list[dict[str, Any]]:
    """Log lines holding a protected value of the subject: counted, and (not dry run) replaced by a marker."""
    out: list[dict[str, Any]] = []
    wanted = sorted(n.encode("utf-8") for n in needles if len(n) >= 4)
    if not wanted or not folder.is_dir():
        return out
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if not any(n in data for n in wanted):
            continue
        lines = data.splitlines(keepends=True)
        hit = [i for i, line in enumerate(lines) if any(n in line for n in wanted)]
        if not dry_run:
            for i in hit:
                lines[i] = b"[line removed by mlbox privacy erase]\n"
            with path.open("r+b") as fh:  # same inode: a process appending to it keeps its handle
                fh.write(b"".join(lines))
                fh.truncate()
        out.append({"path": str(path.relative_to(home)), "lines": len(hit)})
    return out


def scrub_sqlite(db: Database) -> dict[str, Any]:
    """VACUUM (no freed page keeps deleted rows) and truncate the WAL; whether the WAL could be emptied."""
    db.execute("VACUUM")
    row = db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return {"vacuumed": True, "wal_truncated": bool(row is not None and row[0] == 0)}


def backups(box: Box) -> list[dict[str, Any]]:
    """Backups `mlbox backup` made (from the audit log): out of this command's reach."""
    found = box.audit.entries(limit=1_000_000, action="box.backup")
    return [{"kind": "backup", "path": e.target, "made_at": e.ts, "made_by": e.actor} for e in reversed(found)]


def erase(box: Box, given: Mapping[str, str], *, actor: str, dry_run: bool = False) -> dict[str, Any]:
    """Erase (dry run: find) the subject; the certificate document (signed unless dry run)."""
    fs = box.features
    subject = typed_subject(box, given)
    pseudonym = certificate.subject_id(box.audit.key, subject)
    names = views_with(box, subject)
    if not dry_run:
        logs.sweep(box.db, box.paths.predictions)  # orphans of an earlier rewrite killed before its unlink
        for name in names:
            fs.flush(name)  # staged pushes become batches, so the rewrite below covers them
    values: dict[str, set[str]] = {}
    staged = _staged_rows(box, names, subject, values)
    for name in names:
        for ref, found in _protected_values(box, name, subject).items():
            values.setdefault(ref, set()).update(found)
    offline: list[dict[str, Any]] = []
    touched: set[int] = set()
    for name in names:
        result = rewrite_view(
            fs.catalog, fs.offline, name, lambda v: key_filter(v, subject), actor=actor, reason="erasure", dry_run=dry_run
        )
        touched |= {b.batch for b in result.batches}
        offline += [
            {"view": f"{b.view}@{b.version}", "batch": b.batch, "path": b.path, "rows": b.rows, "removed": b.removed,
             "new_batch": b.new_batch}
            for b in result.batches
        ]  # fmt: skip
    online: list[dict[str, Any]] = []
    for v in fs.catalog.versions():
        if set(v.entity.join_keys) & set(subject):
            n = fs.online.delete_keys(v, subject, dry_run=dry_run)
            if n:
                online.append({"table": table_name(v), "view": v.ref, "rows": n})
    hits, request_ids = logs.find(box.db, box.paths.home, subject)
    if not dry_run:
        logs.remove(box.db, box.paths.home, hits, subject, request_ids)
    files = sources.scrub(box, {**subject, "request_id": frozenset(request_ids)} if request_ids else subject, dry_run=dry_run)
    needles = {x for found in values.values() for x in found}
    redacted = _redact_logs(box.paths.logs, needles, box.paths.home, dry_run)
    sets, models = affected_sets_and_models(box, touched)
    retained = _profiles(box, values)
    predictions: list[dict[str, Any]] = [
        {"deployment": h.deployment, "path": h.path, "records": h.matched, "other_rows": h.other_rows}
        for h in hits if h.store == "predictions"
    ]  # fmt: skip
    label_rows: list[dict[str, Any]] = [
        {"deployment": h.deployment, "path": h.path, "rows": h.matched} for h in hits if h.store == "labels"
    ]
    rewritten: list[dict[str, Any]] = [{"path": s.path, "rows": s.removed} for s in files if not s.error]
    removed: dict[str, Any] = {
        "offline": offline,
        "staged_pushes": staged,
        "online": online,
        "predictions": predictions,
        "labels": label_rows,
        "source_files": rewritten,
        "log_lines": redacted,
    }
    totals = {
        "offline_rows": sum(r["removed"] for r in offline),
        "online_rows": sum(r["rows"] for r in online),
        "prediction_records": sum(r["records"] for r in predictions),
        "label_rows": sum(r["rows"] for r in label_rows),
        "source_file_rows": sum(r["rows"] for r in rewritten),
        "log_lines": sum(r["lines"] for r in redacted),
    }
    payload: dict[str, Any] = {
        "subject": {"keys": sorted(subject), "pseudonym": pseudonym, "pseudonym_kind": "HMAC-SHA256 with the box's audit key"},
        "box": {"name": box.settings.project_name(), "home": str(box.paths.home)},
        "erased_at": clock.iso(),
        "erased_by": actor,
        "dry_run": dry_run,
        "removed": removed,
        "totals": totals,
        "training_sets": sets,
        "models_to_review": models,
        "retained": retained + [{"where": s.path, "why": s.error} for s in files if s.error],
        "out_of_reach": backups(box),
        "previous_erasures": [
            {"id": r["id"], "erased_at": r["created_at"], "snapshot": r["snapshot"]}
            for r in box.db.query("SELECT id, created_at, snapshot FROM erasures WHERE subject = ? ORDER BY id", (pseudonym,))
        ],
    }
    if dry_run:
        payload["snapshot"] = fs.snapshot()
        return {"payload": payload}
    payload["scrubbed"] = {"meta.db": scrub_sqlite(box.db), "online.db": scrub_sqlite(fs.online.writer)}
    payload["snapshot"] = fs.snapshot()
    document = certificate.sign(payload, box.paths.keys / SIGNING_KEY)
    digest = hashlib.sha256(canonical(document["payload"])).hexdigest()
    with box.db.atomic():
        box.db.execute(
            "INSERT INTO erasures (subject, snapshot, certificate, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
            (pseudonym, payload["snapshot"], _json(document), payload["erased_at"], actor),
        )
        box.audit.record(actor, "privacy.erase", pseudonym[:16], {"keys": sorted(subject), **totals, "certificate_sha256": digest})
    return document


def _staged_rows(box: Box, names: list[str], subject: Mapping[str, Any], values: dict[str, set[str]]) -> int:
    """Staged (not yet flushed) pushed rows of the subject, their protected strings added to `values`.

    A real erasure flushes them into batches first; a dry run counts them here.
    """
    import json

    count = 0
    for row in box.db.query("SELECT view, version, row FROM feature_push_rows"):
        if row["view"] not in names:
            continue
        data = json.loads(row["row"])
        if any(k in data and _same(data[k], v) for k, v in subject.items()):
            count += 1
            version = box.features.catalog.view(row["view"], int(row["version"]))
            for field, dtype in protected(version).items():
                if dtype == "string" and data.get(field) is not None:
                    values.setdefault(f"{version.ref}:{field}", set()).add(str(data[field]))
    return count


def _same(cell: Any, value: Any) -> bool:
    try:
        return bool(coerce_key(cell, "int64" if isinstance(value, int) else "string", "key") == value)
    except ValidationError:
        return False


def _json(document: Mapping[str, Any]) -> str:
    import json

    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)

