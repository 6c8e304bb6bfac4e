"""The load driver against a real HTTP server on loopback: its bounds, its two modes, and
what it records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from harness.loadgen import VERSION_HEADER, BackgroundLoad, run_load
from tests.loopback import serve_in_thread


Received = list[tuple[bytes, str | None]]


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[str, Received]]:
    """Answers 200 with a version header and keeps what it received; a body of b"fail"
    gets a 500."""
    api = FastAPI()
    received: Received = []

    @api.post("/predict")
    async def predict(request: Request) -> Response:
        body = await request.body()
        received.append((body, request.headers.get("content-type")))
        return Response("{}", status_code=500 if body == b"fail" else 200, headers={VERSION_HEADER: "7"})

    with serve_in_thread(api) as url:
        yield f"{url}/predict", received


def test_only_loopback_is_ever_a_target() -> None:
    for url in ("http://10.0.0.1:8000/predict", "http://example.com/predict", "http://0.0.0.0:8000/x"):
        with pytest.raises(ValueError, match="only ever sent to loopback"):
            asyncio.run(run_load(url, {}, concurrency=1, max_requests=1, max_seconds=1))


def test_closed_loop_stops_at_the_request_budget_and_records_every_answer(echo: tuple[str, Received]) -> None:
    echo_url = echo[0]
    result = asyncio.run(run_load(echo_url, {"instances": [[1]]}, concurrency=3, max_requests=25, max_seconds=30))
    assert len(result.samples) == 25
    assert not result.failed and result.versions() == {"7"}
    failing = asyncio.run(run_load(echo_url, b"fail", concurrency=2, max_requests=4, max_seconds=30))
    assert len(failing.failed) == 4 and {s.status for s in failing.samples} == {500}


def test_a_fixed_rate_sends_on_schedule_not_as_fast_as_answered(echo: tuple[str, Received]) -> None:
    """Against a server answering in about a millisecond, a closed loop would send
    hundreds of requests in a second; at 20/s the schedule allows at most 21 (turns 0
    to 20), and request k never leaves before k/20 s."""
    started = time.time()
    result = asyncio.run(run_load(echo[0], {}, concurrency=4, max_requests=10_000, max_seconds=1.0, rate=20))
    assert 10 <= len(result.samples) <= 21
    for turn, sent in enumerate(sorted(s.sent_at for s in result.samples)):
        assert sent >= started + turn / 20 - 0.005, f"request {turn} left early"


def test_bytes_go_as_they_are_with_their_content_type(echo: tuple[str, Received]) -> None:
    url, received = echo
    received.clear()
    body = b"\x00\x01 not json"
    result = asyncio.run(run_load(url, body, concurrency=1, max_requests=1, max_seconds=10, content_type="application/x-test"))
    with BackgroundLoad(url, {"instances": [[1.5]]}, concurrency=1, max_requests=1) as load:
        deadline = time.monotonic() + 10
        while not received[1:] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert result.samples[0].ok and load.stop().samples[0].ok
    assert received == [(body, "application/x-test"), (b'{"instances": [[1.5]]}', "application/json")]
