"""The floors `mlbox bench serve` measures against: plain Starlette under uvicorn, and a default BentoML service.

Both load the same ONNX file (BENCH_ONNX_MODEL) with one intra-op thread and answer
one-row requests with class probabilities, as mlbox does.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

MODEL = os.environ.get("BENCH_ONNX_MODEL", "")
FEATURES = int(os.environ.get("BENCH_ONNX_FEATURES", "20"))


class Predictor:
    def __init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(MODEL, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.names = [f"x{i}" for i in range(FEATURES)]

    def predict(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        X = np.array([[float(r[n]) for n in self.names] for r in rows], dtype=np.float32)
        probabilities = self.session.run(None, {self.input: X})[0]
        return {"predictions": [{"0": float(p[0]), "1": float(p[1])} for p in probabilities]}


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    predictor = Predictor()

    async def predict(request: Request) -> Response:
        body = json.loads(await request.body())
        return Response(json.dumps(predictor.predict(body["rows"])), media_type="application/json")

    async def readyz(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)])
