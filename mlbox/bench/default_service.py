"""A default `@bentoml.api` service over the same ONNX model: the "out of the box" BentoML floor."""

from __future__ import annotations

from typing import Any

import bentoml

from mlbox.bench.floors import Predictor


@bentoml.service
class DefaultService:
    def __init__(self) -> None:
        self.predictor = Predictor()

    @bentoml.api  # type: ignore[untyped-decorator]
    def predict(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self.predictor.predict(rows)
