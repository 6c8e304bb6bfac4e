"""The request body, read as a stream with a running byte count and a deadline.

A declared Content-Length over the limit is refused before a byte is read, but a chunked
body declares nothing and a client may lie, so the limit is enforced on what arrives:
reading stops, and the request is refused, as soon as the count passes it, whatever the
transfer encoding. A client that trickles its body (a few bytes now and then, holding a
replica's connection and buffer) is cut off at the deadline.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from nonstop.errors import PayloadTooLarge
from serve_app.wire.limits import BodyTimeout, Limits


async def read_body(request: Request, limits: Limits) -> bytes:
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared[:20]} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes (stopped reading at {received})")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise BodyTimeout(
            f"request body not received within {limits.body_timeout_s:g} s ({received} bytes arrived)"
        ) from exc
    return b"".join(chunks)
