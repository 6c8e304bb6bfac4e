"""What `nonstop up` exposes: loopback listeners, and a Jobs API that wants the token."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from harness.rollout import Stack

pytestmark = pytest.mark.integration


def listening_hosts(port: int) -> set[str]:
    """IPv4 addresses a TCP socket listens on for `port`, read from /proc/net/tcp."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            hosts.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return hosts


def test_dashboard_and_serve_listen_on_loopback_only(served: Stack) -> None:
    for port in (served.cluster.dashboard_port, served.cluster.http_port):
        assert listening_hosts(port) == {"127.0.0.1"}, port


def test_job_submission_without_the_token_is_refused(served: Stack) -> None:
    jobs = f"{served.cluster.dashboard_url}/api/jobs/"
    token = Path(served.cluster.auth_token_path).read_text().strip()
    refused = httpx.post(jobs, json={"entrypoint": "echo pwned"}, timeout=10)
    assert refused.status_code in (401, 403), refused.text
    assert token not in refused.text
    wrong = httpx.get(jobs, headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert wrong.status_code in (401, 403)
    allowed = httpx.get(jobs, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert allowed.status_code == 200, allowed.text
