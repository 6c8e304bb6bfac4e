"""The Service stand-in and the switchover bookkeeping, without Ray: real sockets on
loopback, a tiny HTTP server per "cluster"."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from harness.forwarder import Forwarder
from harness.loadgen import Sample
from harness.switchover import KUBERAY_WORKER_PROBE, PreStop, Probe, ServiceSettings, prestop_of
from harness.switchover_outcome import Count, Outcome, went_backwards

def server(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as HAProxy
        def do_GET(self) -> None:
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def backends() -> Iterator[dict[str, ThreadingHTTPServer]]:
    servers = {"blue": server("blue"), "green": server("green")}
    yield servers
    for httpd in servers.values():
        httpd.shutdown()


def get(url: str) -> str:
    with httpx.Client(timeout=5) as client:  # a new connection each time
        return client.get(url).text


def test_routes_only_to_ready_endpoints_of_the_selected_cluster(backends: dict[str, ThreadingHTTPServer]) -> None:
    with Forwarder() as service:
        for name, httpd in backends.items():
            service.add(f"{name}/worker", name, httpd.server_address[1])
        with pytest.raises(httpx.TransportError):
            get(service.url)  # no selector yet: the Service has no endpoints
        service.select("blue")
        with pytest.raises(httpx.TransportError):
            get(service.url)  # selected, not ready
        service.set_ready("blue/worker", True)
        service.set_ready("green/worker", True)
        assert get(service.url) == "blue"
        service.select("green")
        assert get(service.url) == "green"
        service.remove_cluster("green")
        with pytest.raises(httpx.TransportError):
            get(service.url)
        assert service.accepted == {"blue": 1, "green": 1} and service.refused == 3


def test_an_open_connection_stays_with_its_endpoint(backends: dict[str, ThreadingHTTPServer]) -> None:
    with Forwarder() as service, httpx.Client(timeout=5) as client:
        for name, httpd in backends.items():
            service.add(f"{name}/worker", name, httpd.server_address[1])
            service.set_ready(f"{name}/worker", True)
        service.select("blue")
        assert client.get(service.url).text == "blue"
        service.select("green")
        assert client.get(service.url).text == "blue", "kube-proxy keeps an established connection"
        assert get(service.url) == "green"


def test_versions_going_backwards_are_counted() -> None:
    def ok(sent: float, version: str) -> Sample:
        return Sample(sent, 0.1, 200, version)

    assert went_backwards([ok(0, "1"), ok(1, "2"), ok(2, "2")]) == 0
    assert went_backwards([ok(0, "1"), ok(1, "2"), ok(2, "1")]) == 1
    assert went_backwards([ok(0, "2"), ok(0.05, "1")]) == 0, "in flight together: no order between them"


def test_a_failure_is_put_down_to_the_service_only_with_a_refusal_of_its_own() -> None:
    """One refusal explains one failed connection made while it happened; a 503, a
    failure with no refusal then, and a second failure on the same refusal stay."""
    refused_at = 100.0
    samples = [
        Sample(sent_at=99.99, latency_s=0.02, status=0, version=None, error="ReadError"),  # the refused one
        Sample(sent_at=99.99, latency_s=0.02, status=0, version=None, error="ReadError"),  # no refusal left for it
        Sample(sent_at=101.0, latency_s=0.01, status=0, version=None, error="ReadError"),  # none at that time
        Sample(sent_at=102.0, latency_s=0.01, status=503, version=None),
        Sample(sent_at=103.0, latency_s=0.01, status=200, version="1"),
    ]
    outcome = Outcome("t", Count.of(samples), 103.01, Count.of(samples[-1:]), [], {}, [refused_at], {}, samples)
    assert outcome.not_refused_by_the_service() == samples[1:4]


def test_settings_come_from_the_manifest_or_kuberays_defaults() -> None:
    container = {
        "readinessProbe": {"periodSeconds": 5, "timeoutSeconds": 10, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": ["bash", "-c", "sleep 5; kill -USR1 haproxy; sleep 15"]}}},
    }
    service = {
        "spec": {
            "excludeHeadPodFromServeSvc": False,
            "rayClusterConfig": {
                "workerGroupSpecs": [
                    {"minReplicas": 2, "template": {"spec": {"terminationGracePeriodSeconds": 18, "containers": [container]}}}
                ]
            },
        }
    }
    settings = ServiceSettings.of(service, 3.0)
    assert settings.worker_probe == Probe(initial_delay_s=0, period_s=5, timeout_s=10, failure_threshold=3)
    assert (settings.exclude_head, settings.workers, settings.prestop) == (False, 2, PreStop(wait_s=5.0, drain_s=15.0))
    assert settings.termination_s == 18.0, "the kubelet cuts the hook at the grace period"
    bare = {"spec": {"rayClusterConfig": {"workerGroupSpecs": [{"replicas": 1, "template": {"spec": {"containers": [{}]}}}]}}}
    assert ServiceSettings.of(bare, 3.0).worker_probe == KUBERAY_WORKER_PROBE
    assert ServiceSettings.of(bare, 3.0).grace_s == 30.0
    assert prestop_of({}) is None
