"""Materialization: latest values per entity from the offline batches into the online store.

Full mode reads every committed batch of the view version and rebuilds its online table;
incremental mode reads only batches committed since the last materialization and upserts,
never replacing a newer value with an older one. Within the batches read, ties on the
event timestamp go to the later-committed batch, as in training sets. Either mode writes
the online table in one SQLite transaction (online.py), so readers see the previous
materialization or this one, and a run killed mid-way changes nothing online; its
catalog record is written after that commit, so a run killed between the two is simply
redone by the next one (re-applying rows is idempotent under the newer-wins rule).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mlbox.features.catalog import Catalog, ViewVersion
from mlbox.features.offline import OfflineStore
from mlbox.features.online import OnlineStore
from mlbox.features.pit import q
from mlbox.store import crypt
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


def latest_query(version: ViewVersion, sources: list[str]) -> str:
    """Latest row per entity, sorted by key (so SQLite appends to its B-tree); `sources` holds one
    relation per batch file (`crypt.source`), oldest commit first.

    A group-by finds each entity's latest (timestamp, batch rank), packed into one HUGEINT,
    and a join picks that row: about ten times faster than a window over every column.
    """
    keys = ", ".join(q(k) for k in version.entity.join_keys)
    ts = q(version.view.timestamp)
    fields = ", ".join(f"d.{q(f.name)}" for f in version.view.fields)
    order = f"epoch_us({ts})::HUGEINT * 1048576 + __rank"  # a shift refuses negative (pre-1970) times
    data = " UNION ALL ".join(f"SELECT *, {rank} AS __rank FROM {src}" for rank, src in enumerate(sources))
    return (
        f"WITH d AS ({data}), l AS (SELECT {keys}, max({order}) AS __o FROM d GROUP BY ALL) "
        f"SELECT {', '.join(f'd.{q(k)}' for k in version.entity.join_keys)}, epoch_us(d.{ts}) AS __ts, {fields} "
        f"FROM d JOIN l USING ({keys}) WHERE epoch_us(d.{ts})::HUGEINT * 1048576 + d.__rank = l.__o ORDER BY {keys}"
    )


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
    flush: Callable[[ViewVersion], Any] | None = None,
) -> MaterializeResult:
    """Bring the online table of `version` up to the current snapshot.

    `flush` (staged pushes into a batch) runs first, inside the online write transaction:
    a push waits for that lock before writing online, so no pushed row can land in the old
    table between the flush and a full rebuild's swap and then vanish with it.
    """
    started = time.perf_counter()
    with online.writer.atomic():  # one online transaction: readers see the last run or this one
        if flush is not None:
            flush(version)
        snapshot = catalog.snapshot()
        last = catalog.last_materialization(version)
        mode_full = full if full is not None else last is None
        since = -1 if mode_full or last is None else int(last["through_seq"])
        files = [(b, p) for b, p in offline.files(version, snapshot) if b.commit_seq > since]
        rows = 0
        if files or mode_full:
            con = offline.connect()
            try:
                sql = latest_query(version, [crypt.source(con, [str(p)]) for _, p in files])
                reader = con.sql(sql).to_arrow_reader(chunk_rows) if files else iter(())

                def counted() -> Iterator[Any]:
                    for batch in reader:
                        yield batch
                        if progress:
                            progress(batch.num_rows)

                rows = online.write(version, counted(), full=mode_full)
            finally:
                con.close()
    # recorded after the online commit: a run killed in between is redone by the next one
    mode = "full" if mode_full else "incremental"
    with catalog.db.atomic():
        catalog.add_materialization(version, snapshot, rows, mode)
        audit.record(actor, "features.materialize", version.ref, {"mode": mode, "batches": len(files), "rows": rows})
    return MaterializeResult(version.ref, mode, len(files), rows, snapshot, time.perf_counter() - started)
