"""The prediction log a page at a time, newest first: keyset pages over the cataloged Parquet files.

A page is the `limit` records before a cursor (none: the newest), in the order (ts, request_id,
model, variant) descending; the cursor is the last record's key, so the next page starts exactly
after it, whatever was logged since. (A record the sidecar wrote twice, after a restart, has one
key: a page boundary between the two copies shows one.) Nothing loads the whole log: the catalog (meta.db's
`prediction_batches`, one row per file with its record count and time range) says which files can
hold the page. Walking the files by their newest record, the files wholly older than the cursor are
counted until they hold `limit + 1` records; the oldest record the page can need is then no older
than the oldest of those files' first records (`floor`), so only the files that meet
[floor, cursor] are read, in an in-memory DuckDB with one thread (the TUI must not take the cores
`mlbox serve` answers on). A filter (a variant, failed requests only) can leave a window short:
it then widens by the share of its records that matched (at least fourfold, sixteenfold when none
did); short again, the third read takes every older file.

Every read goes through mlbox.store.crypt, so an encrypted box's files are decrypted on the way.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from mlbox import clock
from mlbox.errors import UsageError
from mlbox.store.sqlite import Database

VARIANTS = ("primary", "canary", "shadow")
MAX_LIMIT = 1000
COLUMNS = ("ts", "request_id", "model", "variant", "latency_ms", "entity", "inputs", "outputs", "error")

PAGE_SQL = """
SELECT epoch_us(ts), request_id, model, variant, latency_ms, entity, inputs, outputs, error FROM {scan}
WHERE deployment = ? AND ts >= ? {before} {variant} {errors}
ORDER BY ts DESC, request_id DESC, model DESC, variant DESC LIMIT ?
"""
EPOCH = datetime.fromtimestamp(0, UTC)
MIN_US, MAX_US = -30_610_224_000_000_000, 253_402_300_799_999_999  # 1000-01-01 .. 9999-12-31T23:59:59.999999Z (4-digit years)
BEFORE_SQL = """AND (ts < ? OR (ts = ? AND (request_id < ? OR (request_id = ? AND (model < ? OR (model = ? AND variant < ?))))))"""


@dataclass(frozen=True)
class Cursor:
    """A record's key in the page order; as text, opaque and short enough for a command line (base64url of
    the time as 8 bytes, the variant, then the request id and the model separated by a NUL)."""

    ts_us: int
    request_id: str
    model: str
    variant: str

    def text(self) -> str:
        head = struct.pack(">qB", self.ts_us, VARIANTS.index(self.variant) if self.variant in VARIANTS else 255)
        tail = [self.request_id, self.model] + ([] if self.variant in VARIANTS else [self.variant])
        return base64.urlsafe_b64encode(head + "\0".join(tail).encode()).decode().rstrip("=")

    @property
    def moment(self) -> datetime:
        return moment(self.ts_us)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        bad = UsageError(f"{text[:40]!r} is not a page cursor", hint="pass the `next` value of the page before")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            ts_us, index = struct.unpack(">qB", raw[:9])
            parts = raw[9:].decode().split("\0")
        except (ValueError, struct.error):
            raise bad from None
        if not MIN_US <= ts_us <= MAX_US:  # a time no record has (and one a datetime cannot hold)
            raise bad
        if index < len(VARIANTS) and len(parts) == 2:
            return cls(ts_us, parts[0], parts[1], VARIANTS[index])
        if index == 255 and len(parts) == 3:
            return cls(ts_us, *parts)
        raise bad


@dataclass(frozen=True)
class LogPage:
    """Records newest first (dicts of COLUMNS; JSON columns parsed), the cursor of the next page, the log's size."""

    records: list[dict[str, Any]]
    next: str | None
    total: int  # records of the deployment in the catalog, all variants
    files: int  # the files this page read


def page(
    db: Database, home: Path, deployment: str, *, limit: int = 50, before: str | None = None,
    variant: str | None = None, errors: bool = False,
) -> LogPage:  # fmt: skip
    """One page of `deployment`'s logged records before `before` (a cursor), newest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
    if variant is not None and variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}", hint=f"use one of {', '.join(VARIANTS)}")
    cursor = Cursor.parse(before) if before else None
    catalog = [dict(r) for r in db.query(
        "SELECT path, rows, min_ts, max_ts FROM prediction_batches WHERE deployment = ? ORDER BY max_ts DESC, id DESC",
        (deployment,))]  # fmt: skip
    total = sum(int(r["rows"]) for r in catalog)
    edge = clock.iso(cursor.moment) if cursor else None
    older = [r for r in catalog if edge is None or r["min_ts"] <= edge]
    want, tries = limit + 1, 0  # one more than the page: is there a next one?
    while True:
        floor, counted = window_floor(older, edge, want)
        files = [home / r["path"] for r in older if floor is None or r["max_ts"] >= floor]
        found = read(files, deployment, floor, cursor, variant, errors, limit + 1)
        tries += 1
        if len(found) > limit or floor is None:
            break
        # narrowed, the window fell short: widen it by the share of records that matched (x16 if none did);
        # short twice, the matches are rare: read every older file at once rather than widen again
        want = max(4 * counted, int(1.5 * want * counted / len(found)) if found else 16 * counted)
        want = total + 1 if tries >= 2 else want
    records = [record(row) for row in found[:limit]]
    last = found[limit - 1] if len(found) > limit else None
    nxt = Cursor(int(last[0]), str(last[1]), str(last[2]), str(last[3])).text() if last is not None else None
    return LogPage(records, nxt, total, len(files))


def window_floor(files: list[dict[str, Any]], edge: str | None, want: int) -> tuple[str | None, int]:
    """The oldest time the `want` newest records before `edge` can have, from the catalog alone (None: no
    bound), and the records counted to find it.

    `files` are newest last record first. Only files wholly before `edge` are counted (a file
    reaching past it may hold records the cursor excludes); their records are all at or after the
    oldest first record among them, so once they hold `want` records, so does [that time, edge].
    """
    counted, floor = 0, None
    for f in files:
        if edge is not None and f["max_ts"] >= edge:
            continue
        counted += int(f["rows"])
        floor = f["min_ts"] if floor is None else min(floor, f["min_ts"])
        if counted >= want:
            return floor, counted
    return None, counted


def read(
    files: list[Path], deployment: str, floor: str | None, cursor: Cursor | None, variant: str | None, errors: bool,
    limit: int,
) -> list[tuple[Any, ...]]:  # fmt: skip
    if not files:
        return []
    from mlbox.features.offline import connect
    from mlbox.monitor.quality import log_scan

    params: list[Any] = [deployment, clock.parse_iso(floor) if floor else EPOCH]
    before = ""
    if cursor is not None:
        at = cursor.moment
        before = BEFORE_SQL
        params += [at, at, cursor.request_id, cursor.request_id, cursor.model, cursor.model, cursor.variant]
    if variant is not None:
        params.append(variant)
    params.append(limit)
    con = connect(1)
    try:
        sql = PAGE_SQL.format(scan=log_scan(con, files), before=before, variant="AND variant = ?" if variant else "",
                              errors="AND error IS NOT NULL" if errors else "")  # fmt: skip
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def record(row: tuple[Any, ...]) -> dict[str, Any]:
    """A fetched row as a record: ts as ISO-8601 text, the JSON columns parsed (a bad one kept as its text)."""
    ts_us, request_id, model, variant, latency_ms, entity, inputs, outputs, error = row
    return {
        "ts": clock.iso(moment(int(ts_us))), "request_id": request_id, "model": model,
        "variant": variant, "latency_ms": latency_ms, "entity": _json(entity), "inputs": _json(inputs),
        "outputs": _json(outputs), "error": error,
    }  # fmt: skip


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def moment(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC time, exactly (a float would round)."""
    return EPOCH + timedelta(microseconds=us)


def answer(outputs: Any) -> str:
    """A record's answer in a few characters: the first row's top class and its probability, or its value,
    and how many rows more (`1 0.83`, `12.5 +2 rows`); empty for a failed request."""
    if not isinstance(outputs, list) or not outputs:
        return ""
    first = outputs[0]
    if isinstance(first, dict) and first:
        top = max(first, key=lambda k: first[k] if isinstance(first[k], (int, float)) else float("-inf"))
        value = first[top]
        text = f"{top} {value:.2f}" if isinstance(value, (int, float)) else str(top)
    elif isinstance(first, float):
        text = f"{first:.6g}"
    else:
        text = str(first)
    return text + (f" +{len(outputs) - 1} rows" if len(outputs) > 1 else "")
