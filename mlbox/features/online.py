"""The online store: latest feature values per entity in online.db (SQLite, WAL), for fast lookups.

One table per materialized view version (`fv_<view>_v<version>`, keyed by the entity's
join keys, WITHOUT ROWID): `__ts`, the values' event time in epoch microseconds; `__num`,
the numeric and boolean values packed by `rowcodec`; one TEXT column per string,
timestamp or date field (ISO-8601 text). Writers never overwrite a newer value with an
older one.

Every write (an incremental upsert, a full rebuild, a push) is one SQLite transaction on
a connection of its own: readers, in this process or another, see the table as it was
before the write or after it, never a mix, and a writer killed mid-way leaves nothing
behind (SQLite rolls the open transaction back). A full rebuild fills `<table>__rebuild`
and renames it over the old table inside that transaction. Tables named like staging or
rebuild tables can only be left by an older mlbox killed mid-run; `leftover_tables`
lists them and the first write of a process sweeps them.

Reads return values in their canonical form, the form a model's signature encodes:
numbers, strings, booleans; timestamps and dates as float seconds since 1970-01-01 UTC
(a date is its midnight UTC). A value whose event time is older than now - TTL is null,
exactly as in the point-in-time join at a label time of now.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import Any

from mlbox import clock
from mlbox.errors import NotFound, ValidationError
from mlbox.features.catalog import ViewVersion
from mlbox.features.pit import q
from mlbox.features.rowcodec import RowCodec
from mlbox.store.sqlite import Database, encrypted_errors

TEXT_DTYPES = ("string", "timestamp", "date")
LEFTOVER_SUFFIXES = ("__rebuild", "__stage")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


def table_name(version: ViewVersion) -> str:
    return f"fv_{version.name}_v{version.version}"


def codec_for(version: ViewVersion) -> RowCodec:
    return RowCodec([(f.name, f.dtype) for f in version.view.fields])


def now_us() -> int:
    """`clock.now()` in epoch microseconds, exactly (integer arithmetic)."""
    return (clock.now() - EPOCH) // ONE_US


def epoch_seconds(text: str) -> float:
    """Canonical number of a stored timestamp or date: seconds since the epoch (a date: its midnight UTC)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return ((moment - EPOCH) // ONE_US) / 1_000_000  # int / int: correctly rounded, as numpy's us / 1e6


def _native(text: str, dtype: str) -> Any:
    return date.fromisoformat(text) if dtype == "date" else datetime.fromisoformat(text)


@dataclass(frozen=True)
class Lookup:
    """A prepared read of some fields of one materialized view version."""

    table: str
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    codec: RowCodec
    one_sql: str
    select: str
    ttl_us: int | None  # values older than now - ttl_us are null
    temporal: dict[str, str]  # text field -> "timestamp" | "date": converted to their canonical number
    null_blob: bytes  # the packed record of a row whose every numeric value is null
    one: struct.Struct  # the record's values as one struct, for single-entity reads
    plain: bool  # only numeric fields, all of them asked for: single reads take the struct path
    nulls: int  # null bytes at the start of a record
    no_nulls: bytes  # those bytes when no value is null
    perm: tuple[int, ...] | None  # positions in the blob of `fields`, when they are not in blob order
    wanted: frozenset[str]


@dataclass(slots=True)  # not frozen: frozen construction costs a fifth of a one-entity lookup
class Read:
    """The result of one lookup, aligned with the entity keys asked for."""

    stamps: list[int | None]  # event time (epoch us) of the stored row, None when the entity is unknown
    values: dict[str, list[Any]]
    expired: list[bool] | None  # True where the stored row is older than the TTL (its values come back null)


def leftover_tables(db: Database) -> list[str]:
    """Committed staging or rebuild tables: only an older mlbox killed mid-materialize leaves them."""
    rows = db.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'fv\\_%' ESCAPE '\\'")
    return sorted(r["name"] for r in rows if r["name"].endswith(LEFTOVER_SUFFIXES))


class OnlineStore:
    """online.db: one reader connection shared by the process, and a writer connection of its own."""

    def __init__(self, path: Path, *, busy_timeout_ms: int, synchronous: str) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.db = Database(path, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)

    @cached_property
    def writer(self) -> Database:
        """The connection every write goes through; opening it sweeps leftovers of killed writers."""
        db = Database(self.path, busy_timeout_ms=self.busy_timeout_ms, synchronous=self.synchronous)
        sweep(db)
        return db

    def close(self) -> None:
        self.db.close()
        if "writer" in self.__dict__:
            self.writer.close()

    def has_table(self, name: str) -> bool:
        return bool(self.db.scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def newest_keys(self, version: ViewVersion, limit: int) -> list[dict[str, Any]]:
        """Join keys of the `limit` most recently stamped rows of `version` (none when it is not materialized)."""
        name = table_name(version)
        if not self.has_table(name):
            return []
        cols = ", ".join(q(k) for k in version.entity.join_keys)
        return self.db.query(f"SELECT {cols} FROM {q(name)} ORDER BY __ts DESC, {cols} LIMIT ?", (int(limit),))

    def leftovers(self) -> list[str]:
        return leftover_tables(self.db)

    @staticmethod
    def _create(db: Database, name: str, version: ViewVersion, codec: RowCodec) -> None:
        keys = version.entity.join_keys
        cols = [f"{q(k)} {'TEXT' if t == 'string' else 'INTEGER'} NOT NULL" for k, t in keys.items()]
        cols += ['"__ts" INTEGER NOT NULL', '"__num" BLOB NOT NULL']
        cols += [f"{q(n)} TEXT" for n in codec.text]
        pk = ", ".join(q(k) for k in keys)
        db.execute(f"CREATE TABLE IF NOT EXISTS {q(name)} ({', '.join(cols)}, PRIMARY KEY ({pk})) WITHOUT ROWID")

    def write(self, version: ViewVersion, batches: Iterable[Any], *, full: bool, db: Database | None = None) -> int:
        """Upsert Arrow record batches (keys, __ts, fields...) in one transaction; `full` rebuilds and swaps.

        `db` is a writer connection already inside a transaction (push commits its rows and
        its staging record together); by default the store's writer opens one.
        """
        target = table_name(version)
        name = f"{target}__rebuild" if full else target
        codec = codec_for(version)
        keys = list(version.entity.join_keys)
        cols = [*keys, "__ts", "__num", *codec.text]
        updates = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in cols if c not in keys)
        sql = f"INSERT INTO {q(name)} ({', '.join(q(c) for c in cols)}) VALUES ({', '.join('?' * len(cols))})"
        if not full:  # a rebuild inserts each key once into an empty table
            sql += f" ON CONFLICT ({', '.join(q(k) for k in keys)}) DO UPDATE SET {updates} WHERE excluded.__ts >= {q(name)}.__ts"
        conn = db or self.writer
        written = 0
        with conn.atomic():
            if full:
                conn.execute(f"DROP TABLE IF EXISTS {q(name)}")
            self._create(conn, name, version, codec)
            for batch in batches:
                written += batch.num_rows
                conn.executemany(sql, _rows(batch, keys, codec))
            if full:
                conn.execute(f"DROP TABLE IF EXISTS {q(target)}")
                conn.execute(f"ALTER TABLE {q(name)} RENAME TO {q(target)}")
        return written

    def count(self, version: ViewVersion) -> int:
        name = table_name(version)
        return int(self.db.scalar(f"SELECT count(*) FROM {q(name)}")) if self.has_table(name) else 0

    def _key_where(self, version: ViewVersion, values: Mapping[str, Any]) -> tuple[str, list[Any]]:
        keys = version.entity.join_keys
        given = [(k, coerce_key(v, keys[k], k)) for k, v in values.items() if k in keys]
        return " AND ".join(f"{q(k)} = ?" for k, _ in given), [v for _, v in given]

    def rows_for(self, version: ViewVersion, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The stored rows of `version` whose join keys equal `values` (the keys its entity has), decoded.

        Each row: the keys, `__ts` (ISO-8601 event time) and every field in its native form (for
        people: the right of access). None of `values` among the entity's keys: no rows.
        """
        name = table_name(version)
        where, params = self._key_where(version, values)
        if not where or not self.has_table(name):
            return []
        lookup = self.prepare(version, [f.name for f in version.view.fields])
        rows = self.db.conn.execute(f"SELECT {lookup.select} FROM {q(name)} WHERE {where}", params).fetchall()
        if not rows:
            return []
        keys = [tuple(r[: len(lookup.keys)]) for r in rows]
        got = self.read(lookup, keys, now=-(2**62), native=True)  # no TTL: every stored value, however old
        out = []
        for i, key in enumerate(keys):
            stamp = got.stamps[i]
            out.append(
                {
                    **dict(zip(lookup.keys, key, strict=True)),
                    "__ts": None if stamp is None else micros_to_datetime(stamp).isoformat(),
                    **{f: got.values[f][i] for f in lookup.fields},
                }
            )
        return out

    def delete_keys(self, version: ViewVersion, values: Mapping[str, Any], *, dry_run: bool = False) -> int:
        """Delete (dry run: count) the rows of `version` whose join keys equal `values`, in one transaction.

        The freed pages keep the old bytes until `scrub`; erasure runs it afterwards.
        """
        name = table_name(version)
        where, params = self._key_where(version, values)
        if not where or not self.has_table(name):
            return 0
        if dry_run:
            return int(self.db.scalar(f"SELECT count(*) FROM {q(name)} WHERE {where}", params))
        with self.writer.atomic():
            return int(self.writer.execute(f"DELETE FROM {q(name)} WHERE {where}", params).rowcount)

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
        ttl = version.view.ttl_seconds
        temporal = {f.name: f.dtype for f in version.view.fields if f.dtype in ("timestamp", "date") and f.name in fields}
        return Lookup(
            name,
            keys,
            tuple(fields),
            codec,
            f"SELECT {select} FROM {q(name)} WHERE {where}",
            select,
            None if ttl is None else ttl * 1_000_000,
            temporal,
            codec.null_record(),
            codec.values_packer(),
            not codec.text and set(codec.numeric) <= set(fields),
            len(codec.numeric),
            bytes(len(codec.numeric)),
            None if tuple(fields) == codec.order else tuple(codec.order.index(f) for f in fields if f in codec.order),
            frozenset(fields),
        )

    def read(
        self,
        lookup: Lookup,
        entity_keys: Sequence[tuple[Any, ...]],
        *,
        now: int | None = None,
        native: bool = False,
        out: dict[str, list[Any]] | None = None,
        flat: bool = False,
    ) -> Read:
        """Values of `entity_keys`, added to `out` (default: a new dict); `now` (epoch us, default `clock.now()`) applies the TTL.

        `native` returns timestamps and dates as datetime/date objects instead of their
        canonical numbers (for people, not models). `flat`: the keys are bare values of the
        lookup's one join key, not 1-tuples. A lookup that meets online.db rekeyed by
        `mlbox keys rotate` (SQLITE_NOTADB) reopens it under the new key and runs once more.
        """
        try:
            return self._read(lookup, entity_keys, now=now, native=native, out=out, flat=flat)
        except encrypted_errors() as exc:
            if not self.db.rekeyed(exc):
                raise
            return self._read(lookup, entity_keys, now=now, native=native, out=out, flat=flat)

    def _read(
        self,
        lookup: Lookup,
        entity_keys: Sequence[tuple[Any, ...]],
        *,
        now: int | None = None,
        native: bool = False,
        out: dict[str, list[Any]] | None = None,
        flat: bool = False,
    ) -> Read:
        """`read` without the rekey retry."""
        nkeys, values = len(lookup.keys), {} if out is None else out
        if len(entity_keys) == 1:
            row = self.db.conn.execute(lookup.one_sql, (entity_keys[0],) if flat else entity_keys[0]).fetchone()
            if row is not None and lookup.plain:  # the hot path: one entity, only numbers, every one asked for
                stamp, blob = row[nkeys], row[nkeys + 1]
                if lookup.ttl_us is None or stamp >= (now_us() if now is None else now) - lookup.ttl_us:
                    if blob.startswith(lookup.no_nulls):  # no nulls: the fastest way found to build 50 columns
                        unpacked = lookup.one.unpack_from(blob, lookup.nulls)
                        if lookup.perm is not None:  # the blob is in dtype-block order; answer in the order asked
                            unpacked = tuple([unpacked[i] for i in lookup.perm])
                        values.update(zip(lookup.fields, [[v] for v in unpacked]))
                        return Read([stamp], values, None if lookup.ttl_us is None else [False])
            ordered: list[Any] = [row]
        else:
            ordered = self._many(lookup, entity_keys, flat)
        # every entity found (the common case): columns by C-level map, no Python step per row
        complete = None not in ordered
        stamps: list[Any] = list(map(itemgetter(nkeys), ordered)) if complete else [None if r is None else r[nkeys] for r in ordered]
        expired = None
        if lookup.ttl_us is not None:
            cutoff = (now_us() if now is None else now) - lookup.ttl_us
            if complete and min(stamps) >= cutoff:
                expired = [False] * len(stamps)
            else:
                expired = [t is not None and t < cutoff for t in stamps]  # the PIT join keeps ts >= label_ts - ttl
                if True in expired:
                    ordered = [None if e else r for r, e in zip(ordered, expired, strict=True)]
                    complete = False
        codec = lookup.codec
        if complete:
            decoded: dict[str, list[Any]] = codec.decode(list(map(itemgetter(nkeys + 1), ordered)))
        elif all(r is None for r in ordered):  # unknown or expired entities only
            decoded = {n: [None] * len(ordered) for n in codec.numeric}
        else:
            decoded = codec.decode([lookup.null_blob if r is None else r[nkeys + 1] for r in ordered])
        for j, name in enumerate(codec.text):
            if name not in lookup.wanted:
                continue
            texts = [None if r is None else r[nkeys + 2 + j] for r in ordered]
            dtype = lookup.temporal.get(name)
            if dtype is not None:
                texts = [None if t is None else (_native(t, dtype) if native else epoch_seconds(t)) for t in texts]
            decoded[name] = texts
        values.update({f: decoded[f] for f in lookup.fields})
        return Read(stamps, values, expired)

    def _many(self, lookup: Lookup, entity_keys: Sequence[Any], flat: bool = False) -> list[Any]:
        """Rows of several entities in the order asked (None for unknown ones), by IN lists of 500."""
        nkeys, cursor = len(lookup.keys), self.db.conn.cursor()
        cursor.row_factory = None  # plain tuples, read by position: a sqlite3.Row costs about 0.1 us more per row
        if nkeys == 1:  # keyed by the bare value, rows mapped by C-level zip/map: no Python step per row
            values = entity_keys if flat else [k for (k,) in entity_keys]
            # an IN list answers a repeated key once: only lists past one chunk need them unique
            unique = values if len(values) <= 500 else list(dict.fromkeys(values))
            position: dict[Any, Any] = {}
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                where = f"{q(lookup.keys[0])} IN ({','.join('?' * len(part))})"
                rows = cursor.execute(f"SELECT {lookup.select} FROM {q(lookup.table)} WHERE {where}", part).fetchall()
                position.update(zip(map(itemgetter(0), rows), rows))
            return list(map(position.get, values))
        keyed = list(dict.fromkeys(entity_keys))
        found: dict[tuple[Any, ...], Any] = {}
        for start in range(0, len(keyed), 500):
            part = keyed[start : start + 500]
            one = "(" + ",".join("?" * nkeys) + ")"
            where = f"({', '.join(q(k) for k in lookup.keys)}) IN (VALUES {','.join([one] * len(part))})"
            rows = cursor.execute(f"SELECT {lookup.select} FROM {q(lookup.table)} WHERE {where}", [v for k in part for v in k]).fetchall()
            found.update({tuple(r[:nkeys]): r for r in rows})
        return [found.get(k) for k in entity_keys]


def sweep(db: Database) -> list[str]:
    """Drop leftover staging and rebuild tables; returns their names."""
    names = leftover_tables(db)
    if names:
        with db.atomic():
            for name in leftover_tables(db):  # again under the write lock
                db.execute(f"DROP TABLE IF EXISTS {q(name)}")
    return names


def _rows(batch: Any, keys: list[str], codec: RowCodec) -> list[tuple[Any, ...]]:
    n = batch.num_rows
    numeric = {}
    for field in codec.numeric:
        column = batch.column(field)
        mask = column.is_null().to_numpy(zero_copy_only=False)
        numeric[field] = (column.fill_null(False if column.type == "bool" else 0).to_numpy(zero_copy_only=False), mask)
    blobs = codec.encode(numeric, n)
    text = [_text_values(batch.column(f)) for f in codec.text]
    parts = [batch.column(k).to_pylist() for k in keys] + [batch.column("__ts").to_pylist(), blobs, *text]
    return list(zip(*parts, strict=True))


def _text_values(column: Any) -> list[Any]:
    values: list[Any] = column.to_pylist()
    if values and not isinstance(next((v for v in values if v is not None), ""), str):
        return [None if v is None else v.isoformat() for v in values]
    return values


def coerce_key(value: Any, dtype: str, key: str) -> Any:
    """An entity key from a request or the command line, as the stored type."""
    if dtype in ("int64", "int32"):
        if type(value) is int and -(2**63) <= value < 2**63:  # the common case, checked first
            return value
        if isinstance(value, bool):
            raise ValidationError(f"entity key {key!r} must be an integer, got {value!r}")
        try:
            if isinstance(value, float) and (not value.is_integer() or not -(2.0**63) < value < 2.0**63):
                raise ValueError  # at ±2^63 a float is an out-of-range integer literal the JSON parser rounded
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise ValidationError(f"entity key {key!r} must be an integer, got {value!r}") from None
        if not -(2**63) <= number < 2**63:
            raise ValidationError(f"entity key {key!r} is out of the int64 range")
        return number
    if type(value) is str:
        return value
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValidationError(f"entity key {key!r} must be a string, got {value!r}")
    return str(value)


def micros_to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)
