"""A local Ray cluster's ports, folders and switches, and the environment they become.

One value describes a cluster wherever it runs: `nonstop up`'s on the default ports, or an
`isolated` one (tests, benchmarks) whose every port, folder and token lies in a span of its
own, so clusters side by side never touch each other. Starting and stopping it is
lifecycle.py's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nonstop.config import REGISTRY_ENV, TRUSTED_TYPES_ENV, Settings
from nonstop_ops.cluster.serve_config import grpc_port, serve_port
from serve_app.wire.limits import Limits

LOOPBACK = "127.0.0.1"
# Fixed ports must stay clear of the ports Ray picks itself: its workers' (10002-19999 by
# default) and the ones it draws at random above a port the kernel handed out (raylet,
# object manager, agents: ray/_private/node.py), which lie in Linux's ephemeral range, as
# do the local ends of client connections. A fixed port there may already be held by
# another cluster's server: a GCS started on it never hears from its own raylet.
RAY_WORKER_PORTS = range(10002, 20000)
EPHEMERAL_PORTS = range(32768, 61000)
ISOLATED_SPAN = 1000  # isolated() uses base+1 .. base+950, worker nodes' agents from base+960


class LocalCluster(BaseModel):
    """Ports and switches of one local head node; every listener on loopback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gcs_port: int = 6379
    dashboard_port: int = 8265
    http_port: int = Field(default_factory=lambda: serve_port())
    grpc_port: int = Field(default_factory=lambda: grpc_port())
    # Serve's head-node fallback proxy (HAProxy sends it what no replica answers, and,
    # with gRPC on, ListApplications): Serve's own defaults, moved by `isolated`.
    fallback_http_port: int = 8500
    fallback_grpc_port: int = 9500
    client_server_port: int = 10001
    dashboard_agent_port: int = 52365
    metrics_export_port: int = 8080
    haproxy_stats_port: int = 8404
    haproxy_metrics_port: int = 9101
    haproxy_dir: str = "/tmp/haproxy-serve"
    ray_temp_dir: str = "/tmp/nonstop-ray"
    object_store_bytes: int | None = None
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    throughput_optimized: bool = True
    num_cpus: int | None = None
    auth_token_path: str = str(Path.home() / ".ray" / "auth_token")
    # A predict is idempotent, so HAProxy may replay it on another replica when the one it
    # picked refuses the connection or closes it without an answer. Requests already being
    # processed when a replica is killed can still fail (the rollout report, docs/results).
    ingress_retry_on: str = "conn-failure empty-response junk-response response-timeout"
    ingress_retries: int = 3
    # Ray starts its workers at nice 15 (worker_niceness in Ray's config), behind its own
    # daemons and any client on the machine: the replicas and the HAProxy their manager
    # spawns would wait for a core behind a load generator, and the tail latency under
    # concurrency shows it (the peers benchmark's --worker-niceness A/B, docs/results).
    # Serving is the point of this cluster, the model loader included (it runs within a
    # metered share instead: serve_app/replica/load_governor.py).
    worker_niceness: int = Field(default=0, ge=0, le=19)
    # How long a stopping replica keeps answering after Serve stops routing to it, so the
    # ingress has let go of it first (Serve's RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S);
    # None keeps Serve's default. The test suite's cluster shortens it: HAProxy beside the
    # replicas lets go within its next update, and every replica stopped waits it out.
    ingress_drain_s: float | None = Field(default=None, ge=0)
    # The ports Serve hands its replicas (HTTP, gRPC; first and last, both included). Serve
    # picks them per node from fixed ranges without asking the OS, and a gRPC server binds
    # with SO_REUSEPORT: two clusters on one machine sharing Serve's ranges share a port, and
    # the kernel splits one cluster's gRPC connections between both. None keeps Serve's.
    replica_http_ports: tuple[int, int] | None = None
    replica_grpc_ports: tuple[int, int] | None = None
    # How often every Ray process exports its metrics to the node's agent, which Prometheus
    # scrapes (Ray's RAY_metrics_report_interval_ms; an unset gauge is dropped after two);
    # None keeps Ray's default. The test suite's cluster shortens it, so the tests that read
    # the Prometheus endpoint wait less for what they look for.
    metrics_report_interval_ms: int | None = Field(default=None, ge=1000)

    @classmethod
    def isolated(cls, base: int, name: str, **overrides: object) -> LocalCluster:
        """A cluster on ports base+1 .. base+950 (its replicas' among them) with its own
        haproxy folder and token, so tests and benchmarks never touch a developer's `nonstop
        up` stack, nor each other's clusters."""
        span = range(base, base + ISOLATED_SPAN)
        for taken, whose in ((RAY_WORKER_PORTS, "Ray's worker ports"), (EPHEMERAL_PORTS, "the kernel's ephemeral ports")):
            if span.start < taken.stop and taken.start < span.stop:
                raise ValueError(
                    f"port base {base} puts the cluster's ports ({span.start}-{span.stop - 1}) among {whose} "
                    f"({taken.start}-{taken.stop - 1}), which Ray may hold already: choose a base from "
                    f"{RAY_WORKER_PORTS.stop} to {EPHEMERAL_PORTS.start - ISOLATED_SPAN}"
                )
        folder = f"/tmp/{name}"
        ports = {
            "client_server_port": base + 1,
            "metrics_export_port": base + 80,
            "haproxy_metrics_port": base + 101,
            "dashboard_port": base + 265,
            "dashboard_agent_port": base + 365,
            "gcs_port": base + 379,
            "haproxy_stats_port": base + 404,
            "http_port": base + 800,
            "fallback_http_port": base + 850,
            "grpc_port": base + 900,
            "fallback_grpc_port": base + 950,
        }
        replicas = {"replica_http_ports": (base + 600, base + 699), "replica_grpc_ports": (base + 700, base + 799)}
        return cls.model_validate(
            {
                **ports,
                **replicas,
                "haproxy_dir": folder,
                "ray_temp_dir": f"{folder}-ray",
                "auth_token_path": f"{folder}/auth_token",
                "object_store_bytes": 256 * 1024 * 1024,
                **overrides,
            }
        )

    @field_validator("replica_http_ports", "replica_grpc_ports")
    @classmethod
    def _a_range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 < value[0] <= value[1] < 65536:
            raise ValueError(f"replica ports {value} are not a range of ports (first, last)")
        return value

    @field_validator("haproxy_dir")
    @classmethod
    def _short_enough(cls, value: str) -> str:
        # Serve adds a 56-character hashed folder and HAProxy refuses socket paths over 97.
        if len(str(Path(value).resolve())) > 26:
            raise ValueError(f"haproxy_dir {value!r} is too long for HAProxy's socket paths (26 characters at most)")
        return value

    @field_validator("ray_temp_dir")
    @classmethod
    def _short_temp(cls, value: str) -> str:
        # Ray puts sockets under <temp>/session_<date>_<pid>/sockets/ (about 70 characters);
        # Unix socket paths stop at 107.
        if len(str(Path(value).resolve())) > 36:
            raise ValueError(f"ray_temp_dir {value!r} is too long for Ray's socket paths (36 characters at most)")
        return value

    @property
    def name(self) -> str:
        """The name `isolated` was given: its haproxy folder's."""
        return Path(self.haproxy_dir).name

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def metrics_url(self) -> str:
        """Ray's Prometheus endpoint, where the replicas' nonstop_* metrics appear."""
        return f"http://{LOOPBACK}:{self.metrics_export_port}/metrics"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def haproxy_config_file(self) -> str:
        return str(Path(self.haproxy_dir) / "haproxy.cfg")

    def environment(self, settings: Settings) -> dict[str, str]:
        """Ray and Serve read these when the head starts; they are its configuration."""
        base = Path(self.haproxy_dir)
        return {
            **self.client_environment(),
            REGISTRY_ENV: settings.registry,
            TRUSTED_TYPES_ENV: ",".join(settings.trusted_types),  # the app builder's, as training's
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if self.throughput_optimized else "0",
            "RAY_SERVE_ENABLE_HA_PROXY": "1" if self.ingress == "haproxy" else "0",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": self.haproxy_config_file,
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(self.haproxy_stats_port),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.haproxy_metrics_port),
            "RAY_SERVE_HAPROXY_RETRY_ON": self.ingress_retry_on,
            "RAY_SERVE_HAPROXY_RETRIES": str(self.ingress_retries),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(self.fallback_http_port),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(self.fallback_grpc_port),
            # Serve's gRPC servers refuse a larger message before parsing it: the same
            # bound as an HTTP body (serve_app/grpc_v2/servicer.py)
            "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(Limits().max_body_bytes),
            # Serve parses a metrics line per request from HAProxy in a Python actor,
            # CPU taken from every request (benchmarks/profile_serving.py measures it) for
            # series the replicas' own Serve metrics already give; and one HAProxy thread,
            # not the four Serve starts by default, on a node whose cores serve Python replicas.
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
            "RAY_SERVE_HAPROXY_NBTHREAD": "1",
            "RAY_worker_niceness": str(self.worker_niceness),
            **self._overrides(),
        }

    def _overrides(self) -> dict[str, str]:
        """Ray's and Serve's own settings this cluster moves from their defaults, and only those."""
        chosen: dict[str, str] = {}
        if self.metrics_report_interval_ms is not None:
            chosen["RAY_metrics_report_interval_ms"] = str(self.metrics_report_interval_ms)
        if self.ingress_drain_s is not None:
            chosen["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(self.ingress_drain_s)
        for protocol, ports in (("HTTP", self.replica_http_ports), ("GRPC", self.replica_grpc_ports)):
            if ports is not None:
                chosen[f"RAY_SERVE_DIRECT_INGRESS_MIN_{protocol}_PORT"] = str(ports[0])
                chosen[f"RAY_SERVE_DIRECT_INGRESS_MAX_{protocol}_PORT"] = str(ports[1])
        return chosen

    def client_environment(self) -> dict[str, str]:
        """Ray token authentication: the head enforces it, every client presents the token.

        The default path is Ray's own, so `serve deploy` and `ray job submit` find it too.
        """
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.auth_token_path}

    def use(self) -> None:
        """Make this process a client of the cluster (Ray reads these when it connects)."""
        os.environ.update(self.client_environment())
        raylet = sys.modules.get("ray._raylet")
        if raylet is not None:  # Ray caches its config at import; this is how Ray refreshes it
            raylet.Config.initialize("")

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {Path(self.auth_token_path).read_text().strip()}"}
