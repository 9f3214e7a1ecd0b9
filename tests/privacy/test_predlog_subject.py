"""Finding one subject in the prediction log: entity JSON (arrays and old single objects), rows-request inputs, typed ids."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.parquet as pq

from mlbox.box import Box
from mlbox.serve.predlog import subject
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.writer import PredictionLog


def _log(box: Box, records: list[tuple[str, str | None, str]]) -> None:
    log = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
    now = time.time()
    for i, (rid, entity, inputs) in enumerate(records):
        log.append(Record(now + i, rid, "dep", "m:1", "primary", False, 1.0, entity, inputs, "[0.5]", None))
    log.flush()
    log.close()


def test_the_subject_is_found_in_entities_and_inputs_and_only_their_requests_go(box: Box) -> None:
    _log(box, [
        ("a", '[{"customer_id": 5}]', '[{"x": 1}]'),  # an entity request
        ("b", None, '[{"customer_id": 5.0, "x": 2}]'),  # a rows request whose model takes the key as an input
        ("c", '{"customer_id": "5"}', '[{"x": 3}]'),  # an older log: one entity object, the key as text
        ("d", '[{"customer_id": 6}]', '[{"x": 4}]'),  # someone else
        ("e", None, '[{"customer_id": 55, "x": 5}]'),  # a longer id containing 5 is not 5
        ("f", "not json", "neither"),  # unreadable text is nobody's
    ])  # fmt: skip
    hits, ids = subject.find(box.db, box.paths.home, {"customer_id": 5})
    assert ids == {"a", "b", "c"} and [h.matched for h in hits] == [3]
    assert subject.find(box.db, box.paths.home, {"customer_id": 6})[1] == {"d"}
    records, _labels = subject.read(box.db, box.paths.home, {"customer_id": 5})
    assert sorted(r["request_id"] for r in records) == ["a", "b", "c"]
    old = box.paths.home / hits[0].path
    assert subject.remove(box.db, box.paths.home, hits, {"customer_id": 5}, ids) == [hits[0].path]
    assert not old.exists()
    (path,) = [box.paths.home / r["path"] for r in box.db.query("SELECT path FROM prediction_batches")]
    assert sorted(pq.read_table(path).column("request_id").to_pylist()) == ["d", "e", "f"]
    assert box.db.scalar("SELECT rows FROM prediction_batches") == 3


def test_sweep_removes_uncataloged_files_and_dead_temporaries_only(box: Box) -> None:
    _log(box, [("a", '[{"customer_id": 1}]', "[{}]")])
    (kept,) = [box.paths.home / r["path"] for r in box.db.query("SELECT path FROM prediction_batches")]
    orphan = kept.with_name("0" * 32 + ".parquet")
    orphan.write_bytes(kept.read_bytes())  # a rewrite killed between its commit and its unlink
    dead = kept.with_name(".tmp-999999999-x.parquet")
    live = kept.with_name(f".tmp-{os.getpid()}-y.parquet")
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    removed = subject.sweep(box.db, box.paths.predictions)
    assert sorted(removed) == sorted([orphan, dead]) and kept.exists() and live.exists()
    assert subject.sweep(box.db, Path(box.paths.home / "no-such-folder")) == []
