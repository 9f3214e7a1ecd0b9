"""ONNX files as mlbox uses them: single-file models only, onnxruntime sessions with explicit threads.

Models are parsed and loaded from bytes in memory, so an encrypted box's model is decrypted
only in memory: a path is read through `mlbox.store.crypt.read_bytes` (which opens a sealed
file with its box's key), and a verified artifact's bytes (`ArtifactStore.read_verified`) are
passed as they are. The external-data refusal applies to both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlbox.errors import ValidationError
from mlbox.store import crypt

Model = Path | bytes  # a file (plain, or sealed in an encrypted box) or the model's bytes


def model_bytes(model: Model) -> bytes:
    """The serialized model: bytes as given, a file read (and decrypted when sealed) into memory."""
    return model if isinstance(model, bytes) else crypt.read_bytes(model)


def check_single_file(model: Model, name: str = "") -> None:
    """Refuse ONNX models whose tensors live in external files (they could point anywhere, `../../etc/passwd`).

    Every tensor is checked: initializers, sparse initializers and attribute tensors of the main graph
    and of every subgraph (If/Loop/Scan bodies), which onnxruntime would load just the same.
    """
    _check_bytes(model_bytes(model), name or (model.name if isinstance(model, Path) else "model.onnx"))


def _check_bytes(data: bytes, name: str) -> None:
    import onnx

    try:
        proto = onnx.load_model_from_string(data)  # from memory: never resolves external data files
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise ValidationError(f"{name}: not a readable ONNX model ({type(exc).__name__})") from None
    if not proto.graph.node:  # protobuf parses empty or foreign bytes as an empty model
        raise ValidationError(f"{name}: not an ONNX model (no graph)")
    for tensor in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise ValidationError(f"{name}: ONNX models with external data are refused (tensor {tensor.name!r})")


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


def session(model: Model, threads: int | None = None, providers: list[str] | None = None, name: str = "") -> Any:
    """An onnxruntime session over a single-file model, built from its bytes in memory (intra-op threads: default all cores)."""
    import onnxruntime as ort

    data = model_bytes(model)
    _check_bytes(data, name or (model.name if isinstance(model, Path) else "model.onnx"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
    return ort.InferenceSession(data, sess_options=opts, providers=chosen or ["CPUExecutionProvider"])


def run(sess: Any, X: np.ndarray) -> np.ndarray:
    """Predictions from a session: probabilities [n, k] or values [n]."""
    names = sess.__dict__.get("mlbox_io")
    if names is None:  # looked up once per session: get_inputs() builds new objects on every call
        outputs = sess.get_outputs()
        prediction = next((o for o in outputs if o.type in ("tensor(float)", "tensor(double)")), outputs[-1])
        names = sess.__dict__["mlbox_io"] = (sess.get_inputs()[0].name, [prediction.name])
    result = np.asarray(sess.run(names[1], {names[0]: np.ascontiguousarray(X, dtype=np.float32)})[0])
    return result.reshape(-1) if result.ndim == 2 and result.shape[1] == 1 else result
