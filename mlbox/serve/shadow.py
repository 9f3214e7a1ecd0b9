"""Shadow inference off the request path, in batches.

A request only appends its already-encoded rows to a bounded queue (past the bound, the
copy is dropped and counted). One background thread wakes every `interval` seconds and
runs each shadow model once over everything queued for it, so a busy server pays one
onnxruntime call and one GIL hand-off per batch, not per request; a slow or failing
shadow model delays only this thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlbox.serve.runtime import LoadedModel


@dataclass(frozen=True)
class ShadowItem:
    deployment: str
    model: LoadedModel
    X: np.ndarray | None  # None: encode `rows` with the shadow's own signature (its levels differ)
    answer: np.ndarray  # what the request was answered with
    request_id: str
    rows: str  # JSON of the input rows, as logged for the answer
    entity: str | None


class ShadowWorker:
    def __init__(
        self,
        on_result: Callable[[ShadowItem, np.ndarray | None, bool, float, str | None], None],
        *,
        interval: float = 0.02,
        max_items: int = 10_000,
    ) -> None:
        self.on_result = on_result  # (item, prediction or None, agrees, latency ms, error)
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
            started = time.perf_counter()
            try:
                X = np.vstack([i.X if i.X is not None else self._encode(i) for i in group])
                pred = group[0].model.predict(X)
            except Exception as exc:  # a failing shadow is reported, never raised into serving
                for item in group:
                    self.on_result(item, None, False, 0.0, f"{type(exc).__name__}: {exc}")
                continue
            latency = (time.perf_counter() - started) * 1000
            offset = 0
            for item in group:
                n = item.answer.shape[0]
                part = pred[offset : offset + n]
                offset += n
                self.on_result(item, part, agrees(item.model.task, item.answer, part), latency, None)
        return len(items)

    @staticmethod
    def _encode(item: ShadowItem) -> np.ndarray:
        from mlbox.serve.validation import encode_rows

        return encode_rows(item.model.signature, json.loads(item.rows), "rows", allow_null=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def agrees(task: str, a: np.ndarray, b: np.ndarray) -> bool:
    """Same class (classification) or within 10% (regression)."""
    if task == "classification":
        return bool(np.array_equal(np.asarray(a).argmax(axis=1), np.asarray(b).argmax(axis=1)))
    x, y = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    return bool(np.all(np.abs(x - y) <= 0.1 * np.maximum(np.abs(x), 1e-9)))
