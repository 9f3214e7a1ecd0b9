"""`mlbox bench encryption`: what encryption at rest costs, each operation on a plain and an encrypted box, same run.

Two boxes are built the same way — the same views, batches, model and deployment — one of
them encrypted from birth (its keyring exists before anything else is written). Every
operation runs on both in turns (plain first in even rounds, encrypted first in odd ones,
so neither always meets a warmer machine); each figure is the median of its rounds and each
ratio is encrypted / plain of those two medians. Operations: ingest one batch, the
point-in-time training set over the batches, full materialize, single-entity online lookups
(the issue's target: within 2x of plain), a cold model load, one-row predictions through
`mlbox serve` with the prediction log on (every answer in the log before the figure counts),
and one flush of the prediction log by its writer. A last
row states which stores of the encrypted box are encrypted at rest (and that the plain box
has none), so a figure is never reported against a box that is not what it says.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlbox.bench import encryption_ops as ops
from mlbox.bench.encryption_ops import Side, Sizes
from mlbox.bench.report import Recorder, Row, settle
from mlbox.errors import StoreError, UsageError
from mlbox.store import keyring

PLAIN, ENCRYPTED = "plain", "encrypted"
FLOOR = "plain box, same run"
LOOKUP_LIMIT = 2.0  # the issue: the online lookup within 2x of today's


@dataclass(frozen=True, kw_only=True)
class Scale:
    """Sizes of one run; `rounds` is how many turns each box takes at each operation."""

    entities: int
    rows_per_entity: int
    features: int
    labels: int
    trees: int
    log_records: int
    lookups: int  # lookups per round
    seconds: float  # of one-row predictions per round, after the load generator's one-second warm-up
    rounds: int

    @property
    def rows(self) -> int:
        return self.entities * self.rows_per_entity

    @property
    def sizes(self) -> Sizes:
        return Sizes(self.entities, self.rows_per_entity, self.features, self.labels, self.trees, self.log_records)

    def with_rows(self, rows: int) -> Scale:
        """The same scale with ingest batches of about `rows` rows (the entities change, rows per entity stay)."""
        if rows < self.rows_per_entity:
            raise UsageError(f"--rows {rows} is below {self.rows_per_entity} (one row per entity per hour of a batch)")
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return Scale(**{**fields, "entities": rows // self.rows_per_entity})


FULL = Scale(entities=20_000, rows_per_entity=50, features=10, labels=200_000, trees=100, log_records=50_000,
             lookups=2_000, seconds=3.0, rounds=5)  # fmt: skip
TINY = Scale(entities=200, rows_per_entity=10, features=10, labels=2_000, trees=10, log_records=2_000,
             lookups=200, seconds=0.0, rounds=3)  # fmt: skip  (the quickstart's table: seconds, not a benchmark)
QUICK = Scale(entities=1_000, rows_per_entity=20, features=10, labels=10_000, trees=20, log_records=5_000,
              lookups=300, seconds=1.0, rounds=3)  # fmt: skip


@dataclass(frozen=True)
class Compared:
    """One operation's figure in each round on each box, in the same run."""

    name: str
    unit: str
    plain: tuple[float, ...]
    encrypted: tuple[float, ...]
    limit: float | None = None  # ok when encrypted is at most this many times plain

    def row(self) -> Row:
        """Medians of the rounds; the ratio (Row.ratio) is encrypted over plain of those medians."""
        enc, plain = statistics.median(self.encrypted), statistics.median(self.plain)
        row = Row(f"{self.name} (median of {len(self.plain)} rounds)", enc, plain, self.unit, "report", None, FLOOR)
        if self.limit is None or row.ratio is None:
            return row
        return Row(row.name, enc, plain, self.unit, f"<= {self.limit:g}x plain", row.ratio <= self.limit, FLOOR)


def alternate(rounds: int, fn: Callable[[Side, int], float], sides: dict[str, Side]) -> tuple[list[float], list[float]]:
    """(plain figures, encrypted figures) of `rounds` rounds, the order of the boxes swapping each round."""
    figures: dict[str, list[float]] = {PLAIN: [], ENCRYPTED: []}
    for turn in range(rounds):
        for name in (PLAIN, ENCRYPTED) if turn % 2 == 0 else (ENCRYPTED, PLAIN):
            settle()
            figures[name].append(fn(sides[name], turn))
    return figures[PLAIN], figures[ENCRYPTED]


def compare(name: str, unit: str, rounds: int, fn: Callable[[Side, int], float], sides: dict[str, Side],
            limit: float | None = None) -> Compared:  # fmt: skip
    plain, enc = alternate(rounds, fn, sides)
    return Compared(name, unit, tuple(plain), tuple(enc), limit)


def measure(work: Path, scale: Scale, rec: Recorder, *, serving: bool = True) -> list[Compared]:
    """Build the twin boxes under `work` (left there), run every operation on both; the comparisons, in order.

    Each comparison is also passed to `rec` as its row as soon as it is measured. Without
    `serving` (the quickstart's short table) no server is started and predict is left out.
    """
    s, n = scale.sizes, scale.rows
    rec.stage("generating data")
    sources, labels, train_file = ops.make_data(work / "data", s, scale.rounds)
    sides: dict[str, Side] = {}
    done: list[Compared] = []

    def add(c: Compared) -> None:
        done.append(c)
        rec.add(c.row())

    try:
        for name in (PLAIN, ENCRYPTED):
            rec.stage(f"building the {name} box (views, model, deployment)")
            home = work / name
            sides[name] = Side(name, home, ops.create_box(home, encrypted=name == ENCRYPTED))
            ops.prepare(sides[name], s, train_file, work / "data")
        rec.stage("ingest")
        add(compare(f"ingest a batch of {n:,} rows ({s.features} features)", "rows/s", scale.rounds,
                    lambda side, turn: n / ops.ingest(side, sources[turn]), sides))  # fmt: skip
        rec.stage("training set")
        add(compare(f"training set: {s.labels:,} labels x {scale.rounds} batches ({n * scale.rounds:,} rows)", "s",
                    scale.rounds, lambda side, _: ops.training_set(side, labels), sides))  # fmt: skip
        rec.stage("materialize")
        add(compare(f"materialize {n * scale.rounds:,} rows ({s.entities:,} entities), full", "s", scale.rounds,
                    lambda side, _: ops.materialize(side), sides))  # fmt: skip
        rec.stage("online lookups")
        add(compare(f"online lookup, {s.features} features x 1 entity, another each call (p50 of {scale.lookups:,})", "us", scale.rounds,
                    lambda side, _: ops.lookup(side, s, scale.lookups), sides, LOOKUP_LIMIT))  # fmt: skip
        rec.stage("model load")
        add(compare("model load: registry, verified artifact, onnxruntime session", "s", scale.rounds,
                    lambda side, _: ops.model_load(side), sides))  # fmt: skip
        if serving:
            rec.stage("predict with logging: starting mlbox serve on each box")
            add(predict_with_logging(work, scale, sides))
        add(compare(f"prediction log flush, {s.log_records:,} records", "s", scale.rounds,
                    lambda side, _: ops.log_flush(side, s), sides))  # fmt: skip
    finally:
        for side in sides.values():
            ops.stop_server(side)
            side.box.close()
        keyring.unregister(work / ENCRYPTED)  # this process is done with that box (and run() removes it)
    rec.add(at_rest_row(work))
    return done


def predict_with_logging(work: Path, scale: Scale, sides: dict[str, Side]) -> Compared:
    """p50 of one-row predictions through each box's `mlbox serve`; the servers are stopped (their sidecars
    flush the prediction log) and every answer must be in its box's log before the figure is reported."""
    body = ops.request_body(work)
    try:
        with ThreadPoolExecutor(len(sides)) as pool:  # each start waits for /readyz: wait for both at once
            list(pool.map(lambda side: ops.start_server(side, work), sides.values()))
        plain, enc = alternate(scale.rounds, lambda side, _: float(ops.predict(side, scale.seconds, body)["p50_ms"]), sides)
    finally:
        for side in sides.values():
            ops.stop_server(side)
    for side in sides.values():
        if ops.logged(side) < side.answered:
            raise StoreError(f"the {side.name} box logged {ops.logged(side)} of {side.answered} predictions answered")
    answered = sum(side.answered for side in sides.values())
    name = f"predict 1 row via mlbox serve, c=1, p50 (all {answered:,} answers logged and flushed)"
    return Compared(name, "ms", tuple(plain), tuple(enc))


def at_rest_row(work: Path) -> Row:
    """Which stores of the encrypted box are encrypted; ok only if all are and the plain box has none."""
    enc, plain = ops.at_rest(work / ENCRYPTED), ops.at_rest(work / PLAIN)
    text = ", ".join(f"{store} {e}/{total}" for store, (e, total) in enc.items())
    encrypted = sum(e for e, _ in enc.values())
    ok = all(e == total for e, total in enc.values()) and not any(e for e, _ in plain.values())
    return Row(f"encrypted box, files encrypted at rest: {text} (plain box: {sum(e for e, _ in plain.values())})",
               float(encrypted), None, "files", "every store", ok)  # fmt: skip


def run(scale: Scale = FULL, on_row: Callable[[Row], None] | None = None, on_stage: Callable[[str], None] | None = None) -> list[Row]:
    """Run the benchmark in a temporary folder (removed after); its rows, also passed to `on_row` as measured."""
    rec = Recorder(on_row, on_stage)
    work = Path(tempfile.mkdtemp(prefix="mlbox-bench-encryption-"))
    try:
        measure(work, scale, rec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows
