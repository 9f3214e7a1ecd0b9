"""ONNX files as mlbox uses them: single-file models only, onnxruntime sessions with explicit threads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlbox.errors import ValidationError


def check_single_file(path: Path) -> None:
    """Refuse ONNX models whose tensors live in external files (they could point anywhere, `../../etc/passwd`).

    Every tensor is checked: initializers, sparse initializers and attribute tensors of the main graph
    and of every subgraph (If/Loop/Scan bodies), which onnxruntime would load just the same.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise ValidationError(f"{path.name}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:  # protobuf parses empty or foreign bytes as an empty model
        raise ValidationError(f"{path.name}: not an ONNX model (no graph)")
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise ValidationError(f"{path.name}: ONNX models with external data are refused (tensor {tensor.name!r})")


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto a graph holds, its subgraphs' included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in [*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors]:
                yield from (sparse.values, sparse.indices)
            for sub in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
                yield from _tensors(sub)


def session(path: Path, threads: int | None = None, providers: list[str] | None = None) -> Any:
    """An onnxruntime session with intra-op threads set explicitly (default: all cores)."""
    import onnxruntime as ort

    check_single_file(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
    return ort.InferenceSession(str(path), sess_options=opts, providers=chosen or ["CPUExecutionProvider"])


def run(sess: Any, X: np.ndarray) -> np.ndarray:
    """Predictions from a session: probabilities [n, k] or values [n]."""
    names = sess.__dict__.get("mlbox_io")
    if names is None:  # looked up once per session: get_inputs() builds new objects on every call
        outputs = sess.get_outputs()
        prediction = next((o for o in outputs if o.type in ("tensor(float)", "tensor(double)")), outputs[-1])
        names = sess.__dict__["mlbox_io"] = (sess.get_inputs()[0].name, [prediction.name])
    result = np.asarray(sess.run(names[1], {names[0]: np.ascontiguousarray(X, dtype=np.float32)})[0])
    return result.reshape(-1) if result.ndim == 2 and result.shape[1] == 1 else result
