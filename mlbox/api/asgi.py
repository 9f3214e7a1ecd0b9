"""Plain ASGI messages, shared by the Starlette routes and the raw predict endpoint.

The body is read from `receive` and refused with 413 from the declared or counted length
before it is parsed; every error is one JSON envelope, `{"error": {"status", "code",
"message", "hint"}}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from mlbox.errors import MlboxError, PayloadTooLarge, UsageError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
JSON_HEADERS = ((b"content-type", b"application/json"),)
RETRY_AFTER = ((b"retry-after", b"1"),)


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


def error_body(exc: MlboxError) -> bytes:
    return orjson.dumps({"error": {"status": exc.status, "code": exc.code, "message": exc.message, "hint": exc.hint}})


def error_headers(exc: MlboxError) -> tuple[tuple[bytes, bytes], ...]:
    """The headers `exc` asks its answer to carry (WWW-Authenticate on a 401), as ASGI pairs."""
    return tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items())


async def read_body(declared: bytes | str | None, receive: Receive, limit: int) -> bytes:
    """The request body; 413 from the declared Content-Length or, without one, from the bytes counted so far."""
    if declared is not None:
        text = declared.decode("latin-1") if isinstance(declared, bytes) else declared
        if not text.isdigit():
            raise UsageError("invalid Content-Length header")
        if int(text) > limit:
            raise PayloadTooLarge(f"request body of {int(text)} bytes; at most {limit}", hint="serve.max_body_bytes")
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False) and len(body) <= limit:
        return body  # the common case: one message
    chunks, size = [body], len(body)
    while message.get("more_body", False):
        if size > limit:
            break
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes", hint="serve.max_body_bytes")
    return b"".join(chunks)


async def send_bytes(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
    await send({
        "type": "http.response.start", "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
