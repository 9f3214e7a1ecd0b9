"""Shadow inference in batches, in the serving sidecar (serve/predlog/sidecar.py).

Each logged answer of a deployment with a shadow becomes a `ShadowItem`: the input rows and
the answer exactly as logged. One thread wakes every `interval` seconds and runs each shadow
model once over everything queued for it — rows encoded by the shadow's own signature, one
onnxruntime call per batch — then reports each item's outputs and whether they agree with
the answer. The queue is bounded: past it, items are dropped and counted.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from mlbox.serve.runtime import LoadedModel
from mlbox.serve.validation import encode_rows


@dataclass(slots=True)
class ShadowItem:
    """One logged answer waiting for its shadow model: the inputs and the answer exactly as logged."""

    deployment: str
    model: LoadedModel
    request_id: str
    rows: str  # JSON of the input rows, as logged for the answer
    answer: list[Any]  # the answer's predictions, as logged: {class: probability} per row, or numbers
    entity: str | None  # the answer's entities, one per row (JSON)


Result = Callable[[ShadowItem, list[Any] | None, bool, float, str | None], None]


class ShadowWorker:
    """The shadow queue and its thread: each shadow model run once per interval over what is queued for it."""

    def __init__(self, on_result: Result, *, interval: float = 0.05, max_items: int = 10_000) -> None:
        self.on_result = on_result  # (item, its JSON-ready outputs or None, agrees, latency ms, error)
        self.interval = interval
        self.max_items = max_items
        self.dropped = 0
        self._queue: deque[ShadowItem] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlbox-shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, item: ShadowItem) -> None:
        if len(self._queue) >= self.max_items:
            self.dropped += 1
            return
        self._queue.append(item)  # deque.append is thread-safe

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.drain()
        self.drain()

    def drain(self) -> int:
        items: list[ShadowItem] = []
        while self._queue:
            items.append(self._queue.popleft())
        by_model: dict[str, list[ShadowItem]] = {}
        for item in items:
            by_model.setdefault(item.model.ref, []).append(item)
        for group in by_model.values():
            model = group[0].model
            started = time.perf_counter()
            try:
                inputs = [orjson.loads(i.rows) for i in group]
                X = encode_rows(model.signature, [row for rows in inputs for row in rows], "rows", allow_null=True)
                outputs = model.outputs(model.predict(X))
            except Exception as exc:  # a failing shadow is reported, never raised into serving
                for item in group:
                    self.on_result(item, None, False, 0.0, f"{type(exc).__name__}: {exc}")
                continue
            latency = (time.perf_counter() - started) * 1000
            offset = 0
            for item, rows in zip(group, inputs, strict=True):
                mine = outputs[offset : offset + len(rows)]
                offset += len(rows)
                self.on_result(item, mine, agrees(item.answer, mine), latency, None)
        return len(items)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def agrees(answer: list[Any], shadow: list[Any]) -> bool:
    """Every row the same class (classification: the most probable label) or within 10% (regression)."""
    if len(answer) != len(shadow):
        return False
    for a, b in zip(answer, shadow, strict=True):
        if isinstance(a, dict):
            if not isinstance(b, dict) or max(a, key=a.__getitem__) != max(b, key=b.__getitem__):
                return False
        elif not (isinstance(a, (int, float)) and isinstance(b, (int, float))) or not math.isclose(a, b, rel_tol=0.1, abs_tol=1e-9):
            return False
    return True
