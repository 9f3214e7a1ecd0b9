"""The prediction log's record and its wire format between a worker and its sidecar.

A frame is a u32 length (little-endian) and JSON: `[records, shadows]`, a record being its
fields in order and a shadow `[index of its record, shadow model]`. Nothing crossing the pipe
is ever unpickled.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import IO, NamedTuple

import orjson

HEAD = struct.Struct("<I")


class Record(NamedTuple):
    """One logged prediction (or shadow prediction) of one request; `entity`, `inputs` and `outputs` are JSON text.

    `entity` is a JSON array with one object per row of the request, in order: the entity
    row as sent (entity requests) or `{sticky_key: value}` (rows requests of a deployment
    with a sticky key); None when a deployment has neither.
    """

    ts: float  # epoch seconds
    request_id: str
    deployment: str
    model: str
    variant: str  # primary | canary | shadow
    shadow: bool
    latency_ms: float
    entity: str | None
    inputs: str  # the model's input rows (the sticky key only where it is a model input)
    outputs: str | None
    error: str | None


Shadows = list[tuple[int, str]]  # (index of its record in the frame, shadow model reference)


def encode_frame(records: list[Record], shadows: Shadows) -> bytes:
    body = orjson.dumps((records, shadows), default=tuple)  # a Record is a NamedTuple: sent as its fields
    return HEAD.pack(len(body)) + body


def read_frames(stream: IO[bytes]) -> Iterator[tuple[list[Record], Shadows]]:
    """Frames from `stream` until it closes; a frame cut short by the writer's death is dropped."""
    while True:
        head = stream.read(HEAD.size)
        if len(head) < HEAD.size:
            return
        (size,) = HEAD.unpack(head)
        body = stream.read(size)
        if len(body) < size:
            return
        records, shadows = orjson.loads(body)
        yield [Record(*r) for r in records], [(int(i), str(m)) for i, m in shadows]
