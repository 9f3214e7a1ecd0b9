"""The floors `mlbox bench serve` measures against: plain Starlette under uvicorn, and a default BentoML service.

Both load the same ONNX file (BENCH_ONNX_MODEL) with the box's `serve.threads` intra-op
threads (BENCH_ONNX_THREADS) and the providers mlbox would choose, parse and write JSON
with orjson as mlbox does, and answer one-row requests with class probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from mlbox.config import env_value
from mlbox.hardware import choose_providers


class Predictor:
    """The floor's model: one onnxruntime session over the benchmark's ONNX file."""

    def __init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(env_value("BENCH_ONNX_THREADS", "1"))
        opts.inter_op_num_threads = 1
        providers = choose_providers(ort.get_available_providers())
        self.session = ort.InferenceSession(env_value("BENCH_ONNX_MODEL"), sess_options=opts, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.names = [f"x{i}" for i in range(int(env_value("BENCH_ONNX_FEATURES", "20")))]

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
        body = orjson.loads(await request.body())
        return Response(orjson.dumps(predictor.predict(body["rows"])), media_type="application/json")

    async def readyz(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)])
