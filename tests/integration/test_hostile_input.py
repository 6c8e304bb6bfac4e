"""Hostile requests against the real stack (HAProxy, Ray Serve replicas): each gets a
4xx that renders, reading stops at the limits, and no replica restarts or crashes.

Raw sockets where httpx would be too polite: a chunked body that never ends, a body
that trickles in.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pyarrow as pa
import pytest

from serve_app.wire.limits import Limits
from serve_app.wire.v1_arrow import ARROW_STREAM, arrow_stream
from tests.conftest import train_into
from harness.rollout import Stack, wait_until
from tests.integration.conftest import BODY_TIMEOUT_S, swap_bound

pytestmark = pytest.mark.integration

LIMIT = Limits().max_body_bytes
CHUNK = 64 * 1024


def _connect(served: Stack) -> tuple[socket.socket, bytes]:
    url = urlsplit(served.predict_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=BODY_TIMEOUT_S + 30)
    return sock, url.path.encode()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _rest(sock: socket.socket) -> bytes:
    """What else the server sends before it closes (the answers say `connection: close`)."""
    sock.settimeout(10)
    rest = b""
    try:
        while more := sock.recv(65536):
            rest += more
    except (TimeoutError, ConnectionResetError):
        pass
    return rest


def _send_until_refused(sock: socket.socket, head: bytes, total: int) -> tuple[int, bytes]:
    """Send `head`, then chunks of `[` until `total` bytes or until the server answers."""
    sock.sendall(head)
    sock.setblocking(False)
    sent, answer = 0, b""
    chunk = f"{CHUNK:x}\r\n".encode() + b"[" * CHUNK + b"\r\n"
    pending = memoryview(b"")
    deadline = time.monotonic() + 60
    while sent < total and time.monotonic() < deadline:
        try:
            answer += sock.recv(65536)
            if answer:
                break
        except BlockingIOError:
            pass
        if not pending:
            pending = memoryview(chunk)
        try:
            done = sock.send(pending)
            sent, pending = sent + done, pending[done:]
        except BlockingIOError:
            time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.setblocking(True)
    try:
        if sent >= total:
            sock.sendall(b"0\r\n\r\n")
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent, answer


def test_a_chunked_body_is_cut_off_at_the_limit(served: Stack) -> None:
    """Only a declared Content-Length was checked: 64 MB chunked were buffered whole
    (600 MB took a replica from 0.3 to 1.5 GB) before the 413."""
    before = served.replicas()
    sock, path = _connect(served)
    with sock:
        head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        sent, answer = _send_until_refused(sock, head, 64 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 24 * 1024 * 1024, f"{sent} bytes taken for a {LIMIT}-byte limit"
    assert served.replicas() == before


def test_a_trickled_body_gets_a_408_at_the_deadline(served: Stack) -> None:
    sock, path = _connect(served)
    with sock:
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started < BODY_TIMEOUT_S + 30:
            try:
                sock.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(1.0)
            try:
                more = sock.recv(65536)
            except TimeoutError:
                continue
            if not more:
                break
            answer += more
        answer += _rest(sock)
    assert answer, "no answer within the deadline: the body is read forever"
    assert _status(answer) == 408, answer[:300]
    assert b"request body not received within" in answer


def test_hostile_bodies_get_a_4xx_that_renders_and_no_replica_restarts(served: Stack, client: httpx.Client) -> None:
    before = served.replicas()
    names = served.registry.manifest(served.model, served.registry.resolve(served.model, "production")).feature_names
    table = pa.table({**{n: [1.0] for n in names[1:]}, "renamed_X": [1.0]})
    bad_name = arrow_stream(table).replace(b"renamed_X", b"renamed\xff\xfe")
    arrow = client.post(served.predict_url, content=bad_name, headers={"content-type": ARROW_STREAM})
    assert arrow.status_code == 422 and "not a readable Arrow IPC stream" in arrow.json()["error"], arrow.text
    surrogate = client.post(served.predict_url, content=b'{"instances": [[1]], "\\ud800": 1}')
    assert surrogate.status_code == 422 and surrogate.json()["error"] == "unknown request field(s): \ud800"
    long_name = client.post(served.predict_url.replace(served.model, "m" * 8000), json={"instances": [[1]]})
    assert long_name.status_code == 404 and len(long_name.json()["error"]) < 1000
    assert served.replicas() == before


@pytest.mark.parametrize("damage", ["fifo", "missing"])
def test_an_unreadable_artifact_is_a_storage_refusal_and_the_old_version_keeps_serving(
    served: Stack, client: httpx.Client, demo_data: Path, damage: str
) -> None:
    """A FIFO in place of the artifact hung the loader while it held the holder's lock; a
    missing one raised an untyped FileNotFoundError."""
    old = served.registry.resolve(served.model, "production")
    bad = train_into(served.registry, demo_data, promote=False).manifest.version
    artifact = Path(served.registry.uri) / served.model / "versions" / str(bad) / "model.skops"
    artifact.unlink()
    if damage == "fifo":
        os.mkfifo(artifact)
    before = served.replicas()
    served.registry.promote(served.model, bad)
    try:
        wait_until(lambda: served.refusing_everywhere(bad, "storage"), swap_bound(served), f"every replica refusing v{bad}")
        body = {"instances": served.registry.manifest(served.model, old).samples.inputs[:1]}
        answers = [client.post(served.predict_url, json=body) for _ in range(10)]
        assert {(a.status_code, a.headers.get("x-model-version")) for a in answers} == {(200, str(old))}
        assert served.replicas() == before
    finally:
        served.registry.rollback(served.model)
        wait_until(lambda: served.serving_everywhere(old), swap_bound(served), f"every replica back on v{old}")
