"""The request body through the routes in-process: the byte limit holds for a chunked
body (reading stops at the limit, the rest is never consumed), a trickled body meets a
deadline, and every error renders whatever the client sent, each echo bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from nonstop.registry import Registry
from serve_app.edge import MAX_ERROR_CHARS
from serve_app.wire.limits import Limits
from tests.conftest import MODEL
from tests.inprocess.serve_app.inprocess import PREDICT, call

CHUNK = b"[" * 64 * 1024


def test_a_chunked_body_over_the_limit_is_refused_without_being_read_whole(served: Registry) -> None:
    """Only a declared Content-Length was checked: a chunked body was buffered whole."""
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):  # 640 MB if read to the end
            sent.append(len(CHUNK))
            yield CHUNK

    response = call(served, "POST", PREDICT, limits=Limits(max_body_bytes=1024 * 1024), content=endless())
    assert response.status_code == 413, response.text
    assert "request body exceeds the limit of 1048576 bytes" in response.json()["error"]
    assert sum(sent) <= 2 * 1024 * 1024, f"{sum(sent)} bytes consumed for a 1 MiB limit"


def test_a_trickled_body_meets_the_deadline(served: Registry) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" "
            await asyncio.sleep(0.1)

    response = call(served, "POST", PREDICT, limits=Limits(body_timeout_s=0.5), content=trickle())
    assert response.status_code == 408, response.text
    assert "request body not received within 0.5 s" in response.json()["error"]


def test_a_lone_surrogate_gets_a_422_that_renders(served: Registry) -> None:
    """json.loads accepts "\\ud800"; echoing it made the error renderer itself fail (500)."""
    body = b'{"instances": [{"\\ud800": 1}], "\\udfff": 2}'
    response = call(served, "POST", PREDICT, content=body)
    assert response.status_code == 422, response.text
    assert "unknown request field(s): \udfff" in response.json()["error"]


def test_client_text_echoed_in_errors_stays_short(served: Registry) -> None:
    """Model names, field names and column names were echoed in full."""
    long_model = call(served, "POST", f"/v1/models/{'m' * 20_000}:predict", json={"instances": [[1]]})
    assert long_model.status_code == 404 and len(long_model.json()["error"]) <= MAX_ERROR_CHARS
    fields = {f"field-{i}-{'x' * 30}": 1 for i in range(5_000)}
    many = call(served, "POST", PREDICT, content=json.dumps({"instances": [[1]], **fields}).encode())
    assert many.status_code == 422 and len(many.json()["error"]) <= MAX_ERROR_CHARS
    assert many.json()["error"].startswith("unknown request field(s): field-0")
    assert MODEL in call(served, "GET", f"/v1/models/{MODEL}").text
