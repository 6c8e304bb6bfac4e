"""Past saturation the stack sheds: a request beyond what the replicas hold (their
`max_ongoing_requests` at work plus `max_queued_requests` waiting, serve_config.yaml) is
answered at once with 503 and Retry-After, never left to hang or turned into a 500.

Saturation is made deterministic: requests that send their headers and hold their body
back keep a replica's slot taken (the handler waits for the body), so the test controls
exactly how many requests the replicas hold. Then the held bodies are sent, and every
request the replicas took is answered.
"""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlsplit

import pytest

from harness.rollout import Stack
from nonstop_ops.cluster.serve_config import deployment_config
from tests.integration.conftest import BODY_TIMEOUT_S

pytestmark = pytest.mark.integration

BEYOND = 64  # requests past what the replicas hold: each of these must be shed
ANSWER_WITHIN_S = 30.0


def _head(path: bytes, length: int) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )


def _collect(sockets: list[socket.socket], until: float, wanted: int | None = None) -> dict[int, bytes]:
    """Response heads (and what came with them) by socket index, read until the deadline
    or until `wanted` sockets have answered; a socket the server closed answers what it sent."""
    answers: dict[int, bytes] = {}
    pending = dict(enumerate(sockets))
    received: dict[int, bytes] = {}
    while pending and time.monotonic() < until and (wanted is None or len(answers) < wanted):
        readable, _, _ = select.select(list(pending.values()), [], [], min(0.1, max(0.0, until - time.monotonic())))
        for sock in readable:
            index = sockets.index(sock)
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                more = b""
            received[index] = received.get(index, b"") + more
            if not more or b"\r\n\r\n" in received[index]:
                answers[index] = received[index]
                del pending[index]
    return answers


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _headers(answer: bytes) -> dict[str, str]:
    lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}


def test_requests_past_saturation_get_503_with_retry_after_and_the_held_ones_are_answered(served: Stack) -> None:
    deployment = deployment_config(served.config)
    per_replica = deployment["max_ongoing_requests"] + deployment["max_queued_requests"]
    held = per_replica * len(served.replicas())
    url = urlsplit(served.predict_url)
    body = json.dumps(served.sample_body()).encode()
    head = _head(url.path.encode(), len(body))
    sockets = [socket.create_connection((url.hostname, url.port), timeout=ANSWER_WITHIN_S) for _ in range(held + BEYOND)]
    try:
        for sock in sockets:
            sock.sendall(head)  # the body is held back
        # the shed are answered at once; the held wait for their bodies
        shed = _collect(sockets, time.monotonic() + min(2.0, BODY_TIMEOUT_S / 2))
        for i, sock in enumerate(sockets):
            if i not in shed:
                sock.sendall(body)
        taken = [s for i, s in enumerate(sockets) if i not in shed]
        later = _collect(taken, time.monotonic() + ANSWER_WITHIN_S, wanted=len(taken))
        answers = {**shed, **{sockets.index(taken[j]): a for j, a in later.items()}}
        answers.update({i: b"" for i in range(len(sockets)) if i not in answers})
    finally:
        for sock in sockets:
            sock.close()
    statuses = {i: _status(a) for i, a in answers.items()}
    unanswered = [i for i, s in statuses.items() if s == 0]
    assert not unanswered, f"{len(unanswered)} requests got no answer within {ANSWER_WITHIN_S} s"
    assert set(statuses.values()) <= {200, 503}, sorted(set(statuses.values()))
    refused = [a for a in answers.values() if _status(a) == 503]
    assert len(refused) >= BEYOND, f"{len(refused)} shed of {held + BEYOND} for a hold of {held}"
    assert all(_headers(a).get("retry-after") == "1" for a in refused), refused[0][:300]
    assert sum(1 for code in statuses.values() if code == 200) >= held // 2, "the replicas answered too few of what they held"
