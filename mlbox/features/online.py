"""The online store: latest feature values per entity in online.db (SQLite, WAL), for fast lookups.

One table per materialized view version (`fv_<view>_v<version>`, keyed by the entity's
join keys, WITHOUT ROWID): `__ts`, the values' event time in epoch microseconds; `__num`,
the numeric and boolean values packed by `rowcodec`; one TEXT column per string,
timestamp or date field. Writers upsert in chunks, one transaction per chunk, and never overwrite a
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
from mlbox.features.pit import q
from mlbox.features.rowcodec import RowCodec
from mlbox.store.sqlite import Database

TEXT_DTYPES = ("string", "timestamp", "date")


def table_name(version: ViewVersion) -> str:
    return f"fv_{version.name}_v{version.version}"


def codec_for(version: ViewVersion) -> RowCodec:
    return RowCodec([(f.name, f.dtype) for f in version.view.fields])


@dataclass(frozen=True)
class Lookup:
    """A prepared read of some fields of one materialized view version."""

    table: str
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    codec: RowCodec
    one_sql: str
    select: str


class OnlineStore:
    def __init__(self, path: Path, *, busy_timeout_ms: int, synchronous: str) -> None:
        self.db = Database(path, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)

    def close(self) -> None:
        self.db.close()

    def has_table(self, name: str) -> bool:
        return bool(self.db.scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def _create(self, name: str, version: ViewVersion, codec: RowCodec) -> None:
        keys = version.entity.join_keys
        cols = [f"{q(k)} {'TEXT' if t == 'string' else 'INTEGER'} NOT NULL" for k, t in keys.items()]
        cols += ['"__ts" INTEGER NOT NULL', '"__num" BLOB NOT NULL']
        cols += [f"{q(n)} TEXT" for n in codec.text]
        pk = ", ".join(q(k) for k in keys)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {q(name)} ({', '.join(cols)}, PRIMARY KEY ({pk})) WITHOUT ROWID")

    def write(self, version: ViewVersion, batches: Iterable[Any], *, full: bool) -> int:
        """Upsert Arrow record batches (keys, __ts, fields...), one transaction each; `full` rebuilds and swaps."""
        target = table_name(version)
        name = f"{target}__rebuild" if full else target
        codec = codec_for(version)
        with self.db.atomic():
            if full:
                self.db.execute(f"DROP TABLE IF EXISTS {q(name)}")
            self._create(name, version, codec)
        keys = list(version.entity.join_keys)
        cols = [*keys, "__ts", "__num", *codec.text]
        updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in cols if c not in keys)
        sql = f"INSERT INTO {q(name)} ({', '.join(q(c) for c in cols)}) VALUES ({', '.join('?' * len(cols))})"
        if not full:  # a rebuild inserts each key once into an empty table
            sql += f" ON CONFLICT ({', '.join(q(k) for k in keys)}) DO UPDATE SET {updates} WHERE excluded.__ts >= {q(name)}.__ts"
        written = 0
        for batch in batches:
            n = batch.num_rows
            numeric = {}
            for field in codec.numeric:
                column = batch.column(field)
                mask = column.is_null().to_numpy(zero_copy_only=False)
                numeric[field] = (column.fill_null(False if column.type == "bool" else 0).to_numpy(zero_copy_only=False), mask)
            blobs = codec.encode(numeric, n)
            text = [_text_values(batch.column(f)) for f in codec.text]
            parts = [batch.column(k).to_pylist() for k in keys] + [batch.column("__ts").to_pylist(), blobs, *text]
            with self.db.atomic():
                self.db.executemany(sql, list(zip(*parts, strict=True)))
            written += n
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
        codec = codec_for(version)
        select = ", ".join(q(c) for c in (*keys, "__ts", "__num", *codec.text))
        where = " AND ".join(f"{q(k)} = ?" for k in keys)
        return Lookup(name, keys, tuple(fields), codec, f"SELECT {select} FROM {q(name)} WHERE {where}", select)

    def read(self, lookup: Lookup, entity_keys: Sequence[tuple[Any, ...]]) -> tuple[list[Any], dict[str, list[Any]]]:
        """Event times (epoch us, None when missing) and {field: values}, aligned with `entity_keys`."""
        nkeys, conn = len(lookup.keys), self.db.conn
        if len(entity_keys) == 1:
            rows = conn.execute(lookup.one_sql, entity_keys[0]).fetchall()
        else:
            rows = []
            unique = list(dict.fromkeys(entity_keys))
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                if nkeys == 1:
                    where = f"{q(lookup.keys[0])} IN ({','.join('?' * len(part))})"
                    params: list[Any] = [k[0] for k in part]
                else:
                    one = "(" + ",".join("?" * nkeys) + ")"
                    where = f"({', '.join(q(k) for k in lookup.keys)}) IN (VALUES {','.join([one] * len(part))})"
                    params = [v for k in part for v in k]
                rows += conn.execute(f"SELECT {lookup.select} FROM {q(lookup.table)} WHERE {where}", params).fetchall()
        position = {tuple(r[:nkeys]): i for i, r in enumerate(rows)}
        index = [position.get(k) for k in entity_keys]
        decoded = lookup.codec.decode([r[nkeys + 1] for r in rows])
        for j, name in enumerate(lookup.codec.text):
            decoded[name] = [r[nkeys + 2 + j] for r in rows]
        if len(rows) == len(entity_keys) and all(i == n for n, i in enumerate(index)):
            return [r[nkeys] for r in rows], {f: decoded[f] for f in lookup.fields}
        ts = [None if i is None else rows[i][nkeys] for i in index]
        return ts, {f: [None if i is None else decoded[f][i] for i in index] for f in lookup.fields}


def _text_values(column: Any) -> list[Any]:
    values: list[Any] = column.to_pylist()
    if values and not isinstance(next((v for v in values if v is not None), ""), str):
        return [None if v is None else v.isoformat() for v in values]
    return values


def coerce_key(value: Any, dtype: str, key: str) -> Any:
    """An entity key from a request or the command line, as the stored type."""
    if dtype in ("int64", "int32"):
        if isinstance(value, bool):
            raise ValidationError(f"entity key {key!r} must be an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise ValidationError(f"entity key {key!r} must be an integer, got {value!r}") from None
        if not -(2**63) <= number < 2**63:
            raise ValidationError(f"entity key {key!r} is out of the int64 range")
        return number
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValidationError(f"entity key {key!r} must be a string, got {value!r}")
    return str(value)


def micros_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)
