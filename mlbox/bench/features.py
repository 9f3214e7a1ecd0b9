"""`mlbox bench features`: the feature store against its floors, measured in the same run.

Every row times an mlbox operation and the floor it stands on — a raw DuckDB query over
the same Parquet files, a raw sqlite3 query over the same table — and reports the ratio.
Data is synthetic and seeded; everything lives in a temporary box that is removed after.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbox.bench.report import Recorder, Row, settle
from mlbox.config import load_settings
from mlbox.features.definitions import Entity, FeatureView, Field
from mlbox.features.offline import BATCH_FORMAT, connect
from mlbox.features.online import table_name
from mlbox.features.pit import lit
from mlbox.features.store import FeatureStore
from mlbox.security.identity import Identity
from mlbox.store.audit import AuditLog, load_or_create_key
from mlbox.store.layout import BoxPaths, open_meta


@dataclass(frozen=True)
class Scale:
    entities: int
    rows_per_entity: int  # training-set view: entities x rows = feature rows
    features: int
    labels: int
    mat_entities: int
    mat_rows_per_entity: int
    mat_features: int
    lookups: int

    @property
    def feature_rows(self) -> int:
        return self.entities * self.rows_per_entity


FULL = Scale(100_000, 100, 10, 1_000_000, 100_000, 10, 50, 5_000)
QUICK = Scale(2_000, 50, 10, 20_000, 2_000, 10, 50, 500)


def _alternate(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median time of each over `rounds` rounds that run them in turn, so all see the same load."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            settle()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def p50_ms(fn: Callable[[], Any], n: int) -> float:
    """Median milliseconds of `n` calls after min(50, n) warm-up calls."""
    for _ in range(min(50, n)):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6  # ms


def _make_data(work: Path, s: Scale) -> dict[str, Path]:
    con = connect()
    try:
        feats = ", ".join(f"random() AS f{i}" for i in range(s.features))
        src = work / "features.parquet"
        con.execute("SELECT setseed(0.42)")
        con.execute(
            f"COPY (SELECT e AS entity_id, TIMESTAMPTZ '2025-01-01' + to_minutes(t * 60 + (hash(e, t) % 60)::BIGINT) AS ts, {feats} "
            f"FROM range({s.entities}) r(e), range({s.rows_per_entity}) u(t)) TO {lit(src)} (FORMAT parquet)"
        )
        labels = work / "labels.parquet"
        span = s.rows_per_entity * 60
        con.execute(
            f"COPY (SELECT (hash(i, 1) % {s.entities})::BIGINT AS entity_id, "
            f"TIMESTAMPTZ '2025-01-01' + to_minutes((hash(i, 2) % {span + 120})::BIGINT) AS ts, (hash(i, 3) % 2)::BIGINT AS label "
            f"FROM range({s.labels}) r(i)) TO {lit(labels)} (FORMAT parquet)"
        )
        wide = ", ".join(f"random() AS g{i}" for i in range(s.mat_features))
        mat = work / "wide.parquet"
        con.execute(
            f"COPY (SELECT e AS entity_id, TIMESTAMPTZ '2025-01-01' + to_hours(t) AS ts, {wide} "
            f"FROM range({s.mat_entities}) r(e), range({s.mat_rows_per_entity}) u(t)) TO {lit(mat)} (FORMAT parquet)"
        )
    finally:
        con.close()
    return {"features": src, "labels": labels, "wide": mat}


def run(scale: Scale = FULL, on_row: Callable[[Row], None] | None = None, on_stage: Callable[[str], None] | None = None) -> list[Row]:
    """Run the benchmark; returns its rows (also passed to `on_row` as they are measured)."""
    rec = Recorder(on_row, on_stage)
    add, stage = rec.add, rec.stage

    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-"))
    try:
        stage("generating data")
        data = _make_data(work, scale)
        home = work / "box"
        settings = load_settings(home, environ={})
        paths = BoxPaths(home)
        db = open_meta(paths, busy_timeout_ms=30000, synchronous="NORMAL", create=True)
        audit = AuditLog(db, load_or_create_key(paths.audit_key))
        Identity(db, audit).bootstrap_admin("bench")
        fs = FeatureStore(db, audit, paths, settings, "bench")
        entity = Entity("entity", {"entity_id": "int64"})
        narrow = FeatureView("narrow", "entity", "ts", tuple(Field(f"f{i}", "float64") for i in range(scale.features)))
        wide_fields = tuple(Field(f"g{i}", "float64") for i in range(scale.mat_features))
        wide = FeatureView("wide", "entity", "ts", wide_fields, ttl="3650d")  # so the lookups include the TTL check

        # 1. ingest N rows from Parquet (every check, statistics, sha256, commit) vs a raw DuckDB
        # COPY of the same file with the same writer options and threads; rounds alternate so
        # load from other processes hits both alike. Later rounds go to a scratch view.
        stage("ingest")
        out = work / "copy.parquet"
        scratch = FeatureView("scratch", "entity", "ts", narrow.fields)
        fs.apply([entity, narrow, wide, scratch])

        def raw_copy() -> None:
            con = connect()
            con.execute(f"COPY (SELECT * FROM read_parquet({lit(data['features'])})) TO {lit(out)} ({BATCH_FORMAT})")
            con.close()

        targets = iter(["narrow", "scratch", "scratch"])
        t = _alternate({"floor": raw_copy, "mlbox": lambda: fs.ingest(next(targets), data["features"])}, 3)
        took, floor = t["mlbox"], t["floor"]
        n = scale.feature_rows
        add(Row(f"ingest {n:,} rows from Parquet", n / took, n / floor, "rows/s", "ratio <= 1.5", took / floor <= 1.5, "DuckDB COPY"))

        # 2. training set: mlbox vs a hand-written ASOF JOIN on the same Parquet files, producing
        # the same columns; mlbox also returns the rows in label order, which the plain join does
        # not promise, so a second floor adds the cheapest hand-written way to get that order.
        stage("training set")
        batch = fs.offline.files(fs.view("narrow"))[0][1]
        cols = ", ".join(f"f.f{i}" for i in range(scale.features))
        asof = f"ASOF LEFT JOIN read_parquet({lit(batch)}) f ON l.entity_id = f.entity_id AND l.ts >= f.ts"

        def raw_asof() -> Any:
            con = connect()
            table = con.sql(f"SELECT l.*, {cols} FROM read_parquet({lit(data['labels'])}) l {asof}").to_arrow_table()
            con.close()
            return table

        def raw_asof_ordered() -> Any:
            con = connect()
            table = con.sql(
                f"SELECT l.* EXCLUDE (file_row_number), {cols} FROM read_parquet({lit(data['labels'])}, file_row_number = true) l "
                f"{asof} ORDER BY l.file_row_number"
            ).to_arrow_table()
            con.close()
            return table

        t = _alternate(
            {
                "floor": raw_asof,
                "ordered": raw_asof_ordered,
                "mlbox": lambda: fs.training_set(data["labels"], ["narrow:*"], as_arrow=True, timestamp="ts"),
            },
            3,
        )
        big = scale is FULL
        ordered = t["mlbox"] / t["ordered"]
        add(
            Row(
                f"training set {scale.labels:,} labels x {scale.feature_rows:,} rows ({ordered:.2f}x ASOF JOIN + ORDER BY label row)",
                t["mlbox"],
                t["floor"],
                "s",
                "ratio <= 1.0, < 3 s" if big else "ratio <= 1.0",
                t["mlbox"] / t["floor"] <= 1.0 and (t["mlbox"] < 3 or not big),
                "DuckDB ASOF JOIN",
            )
        )

        # 3. materialize the wide view into the online store
        stage("materialize")
        fs.ingest("wide", data["wide"])
        start = time.perf_counter()
        fs.materialize("wide", full=True)
        took = time.perf_counter() - start
        mat_rows = scale.mat_entities * scale.mat_rows_per_entity
        add(
            Row(
                f"materialize {mat_rows:,} rows ({scale.mat_entities:,} entities x {scale.mat_features} features)",
                took,
                None,
                "s",
                "< 4 s",
                took < 4,
            )
        )

        # 4. online lookups, in-process, vs raw sqlite3 queries on the same table
        stage("online lookups")
        refs = [f"wide:g{i}" for i in range(scale.mat_features)]
        raw = sqlite3.connect(paths.online_db)
        table = table_name(fs.view("wide"))
        one = {"entity_id": 17}
        hundred = [{"entity_id": (i * 37) % scale.mat_entities} for i in range(100)]
        ids = [r["entity_id"] for r in hundred]
        fs.get_online_features(refs, [one])
        p_one = p50_ms(lambda: fs.get_online_features(refs, [one]), scale.lookups)
        f_one = p50_ms(lambda: raw.execute(f'SELECT * FROM "{table}" WHERE entity_id = ?', (17,)).fetchall(), scale.lookups)
        add(Row("online lookup, 50 features x 1 entity (p50)", p_one, f_one, "ms", "<= 0.1 ms", p_one <= 0.1, "sqlite3 point query"))
        marks = ",".join("?" * len(ids))
        p_100 = p50_ms(lambda: fs.get_online_features(refs, hundred), max(100, scale.lookups // 10))
        f_100 = p50_ms(
            lambda: raw.execute(f'SELECT * FROM "{table}" WHERE entity_id IN ({marks})', ids).fetchall(),
            max(100, scale.lookups // 10),
        )
        add(Row("online lookup, 50 features x 100 entities (p50)", p_100, f_100, "ms", "<= 1 ms", p_100 <= 1.0, "sqlite3 IN query"))
        raw.close()
        fs.close()
        db.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows
