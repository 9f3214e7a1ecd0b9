"""Materialization: latest values per entity from the offline batches into the online store.

Full mode reads every committed batch of the view version and rebuilds its online table;
incremental mode reads only batches committed since the last materialization and upserts,
never replacing a newer value with an older one. Within the batches read, ties on the
event timestamp go to the later-committed batch, as in training sets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from mlbox.features.catalog import Catalog, ViewVersion
from mlbox.features.offline import OfflineStore, lit
from mlbox.features.online import OnlineStore
from mlbox.features.pit import q
from mlbox.store.audit import AuditLog


@dataclass(frozen=True)
class MaterializeResult:
    view: str
    mode: str
    batches: int
    rows: int
    through_seq: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def latest_query(version: ViewVersion, files: list[str]) -> str:
    keys = [q(k) for k in version.entity.join_keys]
    ts = q(version.view.timestamp)
    fields = [q(f.name) for f in version.view.fields]
    parts = [
        f"SELECT {', '.join(keys)}, {ts}, {', '.join(fields)}, {rank} AS __rank FROM read_parquet({lit(f)})"
        for rank, f in enumerate(files)
    ]
    return (
        f"SELECT {', '.join(keys)}, epoch_us({ts}) AS __ts, {', '.join(fields)} FROM ({' UNION ALL '.join(parts)}) "
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)} ORDER BY {ts} DESC, __rank DESC) = 1"
    )


def _chunks(cursor: duckdb.DuckDBPyConnection, size: int) -> Iterator[list[tuple[Any, ...]]]:
    while rows := cursor.fetchmany(size):
        yield rows


def materialize(
    catalog: Catalog,
    offline: OfflineStore,
    online: OnlineStore,
    audit: AuditLog,
    version: ViewVersion,
    actor: str,
    *,
    full: bool | None = None,
    chunk_rows: int = 50000,
    progress: Callable[[int], None] | None = None,
) -> MaterializeResult:
    """Bring the online table of `version` up to the current snapshot."""
    started = time.perf_counter()
    snapshot = catalog.snapshot()
    last = catalog.last_materialization(version)
    mode_full = full if full is not None else last is None
    since = -1 if mode_full or last is None else int(last["through_seq"])
    files = [(b, p) for b, p in offline.files(version, snapshot) if b.commit_seq > since]
    rows = 0
    if files or mode_full:
        con = offline.connect()
        try:
            if files:
                cursor = con.execute(latest_query(version, [str(p) for _, p in files]))
                chunks: Iterator[list[tuple[Any, ...]]] = _chunks(cursor, chunk_rows)
            else:
                chunks = iter(())

            def counted() -> Iterator[list[tuple[Any, ...]]]:
                for chunk in chunks:
                    yield chunk
                    if progress:
                        progress(len(chunk))

            rows = online.write(version, counted(), full=mode_full)
        finally:
            con.close()
    mode = "full" if mode_full else "incremental"
    with catalog.db.atomic():
        catalog.add_materialization(version, snapshot, rows, mode)
        audit.record(actor, "features.materialize", version.ref, {"mode": mode, "batches": len(files), "rows": rows})
    return MaterializeResult(version.ref, mode, len(files), rows, snapshot, time.perf_counter() - started)
