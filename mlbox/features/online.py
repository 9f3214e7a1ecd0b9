"""The online store: latest feature values per entity in online.db (SQLite, WAL), for fast lookups.

One typed table per materialized view version (`fv_<view>_v<version>`, keyed by the
entity's join keys, WITHOUT ROWID), plus `__ts`, the value's event time in epoch
microseconds. Writers upsert in chunks, one transaction per chunk, and never overwrite a
newer value with an older one. A full rebuild fills a fresh table and swaps it in with
one rename, so readers see the old table or the new one, never a half-built one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlbox.errors import NotFound, ValidationError
from mlbox.features.catalog import ViewVersion
from mlbox.store.sqlite import Database

SQLITE_TYPES = {
    "int64": "INTEGER",
    "int32": "INTEGER",
    "float64": "REAL",
    "float32": "REAL",
    "string": "TEXT",
    "bool": "INTEGER",
    "timestamp": "TEXT",
    "date": "TEXT",
}


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_name(version: ViewVersion) -> str:
    return f"fv_{version.name}_v{version.version}"


@dataclass(frozen=True)
class Lookup:
    """A prepared read of some fields of one materialized view version."""

    table: str
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    bools: tuple[int, ...]  # positions of bool fields (stored 0/1)
    one_sql: str
    select: str


class OnlineStore:
    def __init__(self, path: Path, *, busy_timeout_ms: int, synchronous: str) -> None:
        self.db = Database(path, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)

    def close(self) -> None:
        self.db.close()

    def has_table(self, name: str) -> bool:
        return bool(self.db.scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def _create(self, name: str, version: ViewVersion) -> None:
        keys = version.entity.join_keys
        cols = [f"{q(k)} {SQLITE_TYPES[t]} NOT NULL" for k, t in keys.items()]
        cols.append('"__ts" INTEGER NOT NULL')
        cols += [f"{q(f.name)} {SQLITE_TYPES[f.dtype]}" for f in version.view.fields]
        pk = ", ".join(q(k) for k in keys)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {q(name)} ({', '.join(cols)}, PRIMARY KEY ({pk})) WITHOUT ROWID")

    def _columns(self, version: ViewVersion) -> list[str]:
        return [*version.entity.join_keys, "__ts", *(f.name for f in version.view.fields)]

    def write(self, version: ViewVersion, chunks: Iterable[Sequence[tuple[Any, ...]]], *, full: bool) -> int:
        """Upsert rows (keys, __ts, fields...) chunk by chunk; with `full`, rebuild and swap the table."""
        target = table_name(version)
        name = f"{target}__rebuild" if full else target
        with self.db.atomic():
            if full:
                self.db.execute(f"DROP TABLE IF EXISTS {q(name)}")
            self._create(name, version)
        cols = self._columns(version)
        keys = list(version.entity.join_keys)
        updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in cols if c not in keys)
        sql = (
            f"INSERT INTO {q(name)} ({', '.join(q(c) for c in cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(q(k) for k in keys)}) DO UPDATE SET {updates} WHERE excluded.__ts >= {q(name)}.__ts"
        )
        written = 0
        for chunk in chunks:
            with self.db.atomic():
                self.db.executemany(sql, chunk)
            written += len(chunk)
        if full:
            with self.db.atomic():
                self.db.execute(f"DROP TABLE IF EXISTS {q(target)}")
                self.db.execute(f"ALTER TABLE {q(name)} RENAME TO {q(target)}")
        return written

    def count(self, version: ViewVersion) -> int:
        name = table_name(version)
        return int(self.db.scalar(f"SELECT count(*) FROM {q(name)}")) if self.has_table(name) else 0

    def prepare(self, version: ViewVersion, fields: Sequence[str]) -> Lookup:
        name = table_name(version)
        if not self.has_table(name):
            raise NotFound(
                f"feature view {version.ref} has not been materialized",
                hint=f"run `mlbox features materialize {version.name}`",
            )
        keys = tuple(version.entity.join_keys)
        dtypes = {f.name: f.dtype for f in version.view.fields}
        select = ", ".join(q(c) for c in (*keys, "__ts", *fields))
        where = " AND ".join(f"{q(k)} = ?" for k in keys)
        return Lookup(
            table=name,
            keys=keys,
            fields=tuple(fields),
            bools=tuple(i for i, f in enumerate(fields) if dtypes[f] == "bool"),
            one_sql=f"SELECT {select} FROM {q(name)} WHERE {where}",
            select=select,
        )

    def read(self, lookup: Lookup, entity_keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        """Rows by entity key tuple: (__ts, field values...). Missing entities are absent."""
        nkeys = len(lookup.keys)
        conn = self.db.conn
        if len(entity_keys) == 1:
            rows = conn.execute(lookup.one_sql, entity_keys[0]).fetchall()
        else:
            rows = []
            for start in range(0, len(entity_keys), 500):
                part = entity_keys[start : start + 500]
                if nkeys == 1:
                    sql = f"SELECT {lookup.select} FROM {q(lookup.table)} WHERE {q(lookup.keys[0])} IN ({','.join('?' * len(part))})"
                    params: list[Any] = [k[0] for k in part]
                else:
                    tuple_sql = "(" + ",".join("?" * nkeys) + ")"
                    sql = (
                        f"SELECT {lookup.select} FROM {q(lookup.table)} WHERE ({', '.join(q(k) for k in lookup.keys)}) "
                        f"IN (VALUES {','.join([tuple_sql] * len(part))})"
                    )
                    params = [v for k in part for v in k]
                rows += conn.execute(sql, params).fetchall()
        out: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for row in rows:
            values = tuple(row[nkeys:])
            if lookup.bools:
                fixed = list(values)
                for i in lookup.bools:
                    if fixed[i + 1] is not None:
                        fixed[i + 1] = bool(fixed[i + 1])
                values = tuple(fixed)
            out[tuple(row[:nkeys])] = values
        return out


def coerce_key(value: Any, dtype: str, key: str) -> Any:
    """An entity key from a request or the command line, as the stored type."""
    if dtype in ("int64", "int32"):
        if isinstance(value, bool):
            raise ValidationError(f"entity key {key!r} must be an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ValidationError(f"entity key {key!r} must be an integer, got {value!r}") from None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValidationError(f"entity key {key!r} must be a string, got {value!r}")
    return str(value)


def micros_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)
