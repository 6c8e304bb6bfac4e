"""The one way this project starts, deploys to, and stops a local Ray cluster.

The CLI (`nonstop up/down`) and the test fixtures both come through here, so the
HAProxy ingress, loopback binding and the stale-haproxy clean-up are done the same way
everywhere. Ray 2.60's `ray stop --force` leaves Serve's haproxy alive and bound to the
HTTP port, and the next cluster's traffic would reach it: `stop` kills it by pid and
checks that the port is free.
"""

from __future__ import annotations

import copy
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, field_validator

from nonstop.config import REGISTRY_ENV, Settings
from nonstop.errors import NonstopError

SERVE_CONFIG = Path(__file__).resolve().parent.parent / "serve_app" / "serve_config.yaml"
LOOPBACK = "127.0.0.1"


class ClusterError(NonstopError):
    status_code = 503


class LocalCluster(BaseModel):
    """Ports and switches of one local head node; every listener on loopback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gcs_port: int = 6379
    dashboard_port: int = 8265
    http_port: int = 8000
    client_server_port: int = 10001
    dashboard_agent_port: int = 52365
    metrics_export_port: int = 8080
    haproxy_stats_port: int = 8404
    haproxy_metrics_port: int = 9101
    haproxy_dir: str = "/tmp/haproxy-serve"
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    throughput_optimized: bool = True
    num_cpus: int | None = None
    auth_token_path: str = str(Path.home() / ".ray" / "auth_token")
    # A predict is idempotent, so HAProxy may replay it on another replica when the one it
    # picked refuses the connection or closes it without an answer. Requests already being
    # processed when a replica is killed can still fail (see the README's rollout table).
    ingress_retry_on: str = "conn-failure empty-response junk-response response-timeout"
    ingress_retries: int = 3

    @classmethod
    def isolated(cls, base: int, name: str, **overrides: object) -> LocalCluster:
        """A cluster on ports base+1 .. base+800 with its own haproxy folder and token,
        so tests and benchmarks never touch a developer's `nonstop up` stack."""
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
        }
        return cls.model_validate({**ports, "haproxy_dir": folder, "auth_token_path": f"{folder}/auth_token", **overrides})

    @field_validator("haproxy_dir")
    @classmethod
    def _short_enough(cls, value: str) -> str:
        # Serve adds a 56-character hashed folder and HAProxy refuses socket paths over 97.
        if len(str(Path(value).resolve())) > 26:
            raise ValueError(f"haproxy_dir {value!r} is too long for HAProxy's socket paths (26 characters at most)")
        return value

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
        }

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


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def is_running(cluster: LocalCluster) -> bool:
    return port_open(cluster.gcs_port) and port_open(cluster.dashboard_port)


def ensure_token(cluster: LocalCluster) -> None:
    """A random token, readable by its owner only; kept across restarts so clients keep working."""
    path = Path(cluster.auth_token_path)
    if path.exists() and path.read_text().strip():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))


def start(cluster: LocalCluster, settings: Settings) -> None:
    cluster.use()
    if is_running(cluster):
        return
    ensure_token(cluster)
    if port_open(cluster.http_port):
        raise ClusterError(
            f"port {cluster.http_port} is already taken (a stale haproxy? run `nonstop down`)"
        )
    Path(cluster.haproxy_dir).mkdir(parents=True, exist_ok=True)
    command = [
        _ray_bin(), "start", "--head",
        f"--node-ip-address={LOOPBACK}",
        f"--port={cluster.gcs_port}",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={cluster.dashboard_port}",
        f"--ray-client-server-port={cluster.client_server_port}",
        f"--dashboard-agent-listen-port={cluster.dashboard_agent_port}",
        f"--metrics-export-port={cluster.metrics_export_port}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]  # fmt: skip
    if cluster.num_cpus is not None:
        command.append(f"--num-cpus={cluster.num_cpus}")
    env = {**os.environ, **cluster.environment(settings)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"`ray start` failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def stop(cluster: LocalCluster, timeout_s: float = 30.0) -> None:
    subprocess.run([_ray_bin(), "stop", "--force"], capture_output=True, check=False)
    for pid in haproxy_pids(cluster):
        _kill(pid)
    deadline = time.monotonic() + timeout_s
    while port_open(cluster.http_port):
        if time.monotonic() > deadline:
            raise ClusterError(f"port {cluster.http_port} is still served after stopping the cluster")
        time.sleep(0.2)


def haproxy_pids(cluster: LocalCluster) -> list[int]:
    """haproxy processes whose config lies under this cluster's haproxy folder.

    Serve puts each cluster's config in a hashed subfolder of that folder, so the match
    is on the folder prefix.
    """
    prefix = str(Path(cluster.haproxy_dir).resolve()).encode() + b"/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"haproxy") and any(a.startswith(prefix) for a in cmdline):
            pids.append(int(entry.name))
    return pids


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(25):
            time.sleep(0.1)
            os.kill(pid, 0)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def load_serve_config(path: Path = SERVE_CONFIG) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


def deployment_config(config: dict[str, Any], app: str = "nonstop", deployment: str = "ModelServer") -> dict[str, Any]:
    for application in config["applications"]:
        if application["name"] == app:
            for entry in application.get("deployments", []):
                if entry["name"] == deployment:
                    return entry
    raise ClusterError(f"serve config has no deployment {app}/{deployment}")


def deploy(cluster: LocalCluster, config: dict[str, Any]) -> None:
    """What `serve deploy` does, with the HTTP listener pinned to this cluster's port."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
    from ray.serve.schema import ServeDeploySchema

    config = copy.deepcopy(config)
    config.setdefault("http_options", {}).update({"host": LOOPBACK, "port": cluster.http_port})
    ServeDeploySchema.model_validate(config)
    ServeSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers()).deploy_applications(config)


def app_status(cluster: LocalCluster) -> dict[str, Any]:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers()).get_serve_details()


def wait_ready(cluster: LocalCluster, model: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Until the app is RUNNING and the model answers as ready over HTTP."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        apps = app_status(cluster).get("applications", {})
        status = apps.get("nonstop", {}).get("status")
        if status == "DEPLOY_FAILED":
            raise ClusterError(f"deployment failed: {apps['nonstop'].get('message')}")
        if status == "RUNNING":
            try:
                answer = httpx.get(f"{cluster.http_url}/v1/models/{model}", timeout=5)
                if answer.status_code == 200 and answer.json().get("ready"):
                    return answer.json()
                last = f"HTTP {answer.status_code}: {answer.text[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc)
        else:
            last = f"application status {status}"
        time.sleep(0.5)
    raise ClusterError(f"model {model!r} not ready after {timeout_s:.0f}s ({last})")
