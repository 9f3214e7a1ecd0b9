"""Seeded random feature data and brute-force oracles for the point-in-time join and the online store.

Everything here is plain Python over lists of dicts: no DuckDB, no mlbox internals, so it is
an independent statement of the semantics:

- training sets: for each label row and view, the view's row for the same entity with the
  greatest (event timestamp, commit order) where timestamp <= label timestamp; null when
  there is none or when it is older than label timestamp - TTL (exactly TTL old is kept);
- online store: per entity, the row with the greatest (event timestamp, commit order).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from mlbox.features.definitions import Entity, FeatureView, Field

BASE = pd.Timestamp("2025-03-01T00:00:00Z")
STEP = pd.Timedelta(minutes=10)
GRID = 30  # grid points for feature timestamps
US = pd.Timedelta(microseconds=1)

CUSTOMER = Entity("customer", {"customer_id": "int64"})
STORE = Entity("store", {"region": "string", "store_no": "int32"})

PROFILE = FeatureView(
    "cust_profile",
    "customer",
    "ts",
    (Field("x", "int64"), Field("score", "float64"), Field("tier", "string"), Field("active", "bool")),
    ttl="2h",
)
USAGE = FeatureView(
    "cust_usage",
    "customer",
    "event_ts",
    (Field("calls", "int64"), Field("calls_x2", "int64")),
    transformation="SELECT customer_id, event_ts, calls, calls * 2 AS calls_x2 FROM source",
)
SALES = FeatureView(
    "store_sales",
    "store",
    "ts",
    (Field("sales", "float64"), Field("open", "bool")),
    ttl="30m",
)
VIEWS = (PROFILE, USAGE, SALES)
KEYS = {"cust_profile": ("customer_id",), "cust_usage": ("customer_id",), "store_sales": ("region", "store_no")}
TTL = {"cust_profile": pd.Timedelta(hours=2), "cust_usage": None, "store_sales": pd.Timedelta(minutes=30)}
# stored columns of each view (after transformation), i.e. what the oracle sees
FIELDS = {v.name: [f.name for f in v.fields] for v in VIEWS}

CUSTOMERS = list(range(1, 13))  # labels also use 0, 13, 14: never ingested
STORES = [("north", 1), ("north", 2), ("south", 1), ("east", 7), ("Ünïcode 'q'", 3)]
MISSING_STORES = [("west", 9), ("north", 3)]


@dataclass
class Batch:
    view: str
    rows: list[dict[str, Any]]  # stored rows (transformation applied), for the oracle
    source_rows: list[dict[str, Any]]  # what is ingested


@dataclass
class World:
    batches: dict[str, list[Batch]] = field(default_factory=dict)  # commit order per view


def _ts(rng: random.Random, lo: int, hi: int) -> pd.Timestamp:
    ts = BASE + rng.randrange(lo, hi) * STEP
    if rng.random() < 0.15:
        ts += US * rng.choice((1, -1))
    return ts


def _row(view: str, rng: random.Random, key: tuple[Any, ...], ts: pd.Timestamp) -> tuple[dict[str, Any], dict[str, Any]]:
    if view == "cust_profile":
        src = {
            "customer_id": key[0],
            "ts": ts,
            "x": None if rng.random() < 0.1 else rng.randrange(-1000, 1000),
            "score": round(rng.uniform(-5, 5), 6),
            "tier": rng.choice(["gold", "silver", "bronze", None]),
            "active": None if rng.random() < 0.1 else rng.random() < 0.5,
        }
        return src, dict(src)
    if view == "cust_usage":
        src = {"customer_id": key[0], "event_ts": ts, "calls": rng.randrange(0, 500)}
        return src, {**src, "calls_x2": src["calls"] * 2}
    src = {"region": key[0], "store_no": key[1], "ts": ts, "sales": round(rng.uniform(0, 1e4), 3), "open": rng.random() < 0.7}
    return src, dict(src)


def make_world(seed: int, n_batches: int = 4, disjoint: bool = False) -> World:
    """Random batches per view: small key and time pools, so timestamps overlap and tie across batches."""
    rng = random.Random(seed)
    world = World()
    for v in VIEWS:
        pool = STORES if v.name == "store_sales" else [(c,) for c in CUSTOMERS]
        out = []
        for b in range(n_batches):
            lo, hi = (b * GRID // n_batches, (b + 1) * GRID // n_batches) if disjoint else (0, GRID)
            seen: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]] = {}
            for _ in range(rng.randrange(8, 30)):
                key = rng.choice(pool)
                ts = _ts(rng, lo, hi)
                seen[(*key, ts)] = _row(v.name, rng, key, ts)
            rows = list(seen.values())
            out.append(Batch(v.name, [r for _, r in rows], [s for s, _ in rows]))
        world.batches[v.name] = out
    if not disjoint:
        # guarantee at least one exact (entity, timestamp) tie across batches per view
        for v in VIEWS:
            first, last = world.batches[v.name][0], world.batches[v.name][-1]
            src, stored = _row(v.name, rng, tuple(first.source_rows[0][k] for k in KEYS[v.name]), first.source_rows[0][v.timestamp])
            key_ts = tuple(src[k] for k in (*KEYS[v.name], v.timestamp))
            last.source_rows = [s for s in last.source_rows if tuple(s[k] for k in (*KEYS[v.name], v.timestamp)) != key_ts]
            last.rows = [s for s in last.rows if tuple(s[k] for k in (*KEYS[v.name], v.timestamp)) != key_ts]
            last.source_rows.append(src)
            last.rows.append(stored)
    return world


def source(batch: Batch, kind: str, tmp_dir: Any, tag: str) -> Any:
    """The batch as a pandas frame, an Arrow table or a Parquet file."""
    view = {v.name: v for v in VIEWS}[batch.view]
    df = pd.DataFrame(batch.source_rows)
    df[view.timestamp] = pd.to_datetime(df[view.timestamp], utc=True).astype("datetime64[us, UTC]")
    for c, dtype in (("x", "Int64"), ("active", "boolean"), ("open", "boolean"), ("customer_id", "int64"), ("calls", "int64")):
        if c in df:
            df[c] = df[c].astype(dtype)
    if "store_no" in df:
        df["store_no"] = df["store_no"].astype("int32")
    if kind == "pandas":
        return df
    table = pa.Table.from_pandas(df, preserve_index=False)
    if kind == "arrow":
        return table
    path = tmp_dir / f"{tag}.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    return str(path)


def make_labels(seed: int, world: World, n: int = 160) -> list[dict[str, Any]]:
    """Label rows hitting every edge: equal timestamps, exactly-TTL, TTL + 1 µs, before any feature, missing entities."""
    rng = random.Random(seed * 7919 + 1)
    rows: list[dict[str, Any]] = []

    def add(cust: int, store: tuple[str, int], ts: pd.Timestamp) -> None:
        rows.append({"customer_id": cust, "region": store[0], "store_no": store[1], "ts": ts, "label": rng.randrange(2)})

    for _ in range(n):
        k = rng.randrange(-3, GRID + 16)
        ts = BASE + k * STEP + rng.choice((pd.Timedelta(0), pd.Timedelta(0), US, -US, pd.Timedelta(seconds=1)))
        add(rng.choice([*CUSTOMERS, 0, 13, 14]), rng.choice([*STORES, *MISSING_STORES]), ts)
    # explicit edges from real feature rows
    for v in VIEWS:
        for batch in world.batches[v.name]:
            r = rng.choice(batch.rows)
            t = r[v.timestamp]
            cust = r["customer_id"] if "customer_id" in r else rng.choice(CUSTOMERS)
            store = (r["region"], r["store_no"]) if "region" in r else rng.choice(STORES)
            add(cust, store, t)  # label timestamp == feature timestamp
            if TTL[v.name] is not None:
                add(cust, store, t + TTL[v.name])  # exactly TTL old: kept
                add(cust, store, t + TTL[v.name] + US)  # one microsecond too old: null
            add(cust, store, t - US)
    add(1, STORES[0], BASE - pd.Timedelta(days=1))  # before any feature
    rng.shuffle(rows)
    for i, r in enumerate(rows):
        r["row"] = i
    return rows


def pit_oracle(labels: list[dict[str, Any]], world: World, views: list[str], upto: int | None = None) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """Expected feature columns for each label row, plus counts of the edge cases that were hit."""
    expected: dict[str, list[Any]] = {f: [] for v in views for f in FIELDS[v]}
    hits = {"exact_ts": 0, "exact_ttl_kept": 0, "ttl_plus_1us_null": 0, "tie_later_batch": 0, "missing": 0}
    for v in views:
        keys, view = KEYS[v], {x.name: x for x in VIEWS}[v]
        index: dict[tuple[Any, ...], list[tuple[pd.Timestamp, int, dict[str, Any]]]] = {}
        batches = world.batches[v] if upto is None else world.batches[v][: upto + 1]
        for rank, batch in enumerate(batches):
            for r in batch.rows:
                index.setdefault(tuple(r[k] for k in keys), []).append((r[view.timestamp], rank, r))
        for lab in labels:
            lts = lab["ts"]
            cands = [c for c in index.get(tuple(lab[k] for k in keys), []) if c[0] <= lts]
            best = max(cands, key=lambda c: (c[0], c[1])) if cands else None
            if best is not None and sum(1 for c in cands if c[0] == best[0]) > 1:
                hits["tie_later_batch"] += 1
            ttl = TTL[v]
            if best is None:
                hits["missing"] += 1
                values = dict.fromkeys(FIELDS[v])
            elif ttl is not None and best[0] < lts - ttl:
                if best[0] == lts - ttl - US:
                    hits["ttl_plus_1us_null"] += 1
                values = dict.fromkeys(FIELDS[v])
            else:
                if best[0] == lts:
                    hits["exact_ts"] += 1
                if ttl is not None and best[0] == lts - ttl:
                    hits["exact_ttl_kept"] += 1
                values = {f: best[2][f] for f in FIELDS[v]}
            for f in FIELDS[v]:
                expected[f].append(values[f])
    return expected, hits


def latest_per_entity(world: World, view: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Online-store oracle: per entity the row with the greatest (timestamp, commit order)."""
    keys, ts = KEYS[view], {x.name: x for x in VIEWS}[view].timestamp
    best: dict[tuple[Any, ...], tuple[pd.Timestamp, int, dict[str, Any]]] = {}
    for rank, batch in enumerate(world.batches[view]):
        for r in batch.rows:
            k = tuple(r[c] for c in keys)
            if k not in best or (r[ts], rank) >= best[k][:2]:
                best[k] = (r[ts], rank, r)
    return {k: v[2] for k, v in best.items()}
