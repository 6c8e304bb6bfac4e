"""The one way this project starts, deploys to, and stops a local Ray cluster.

The CLI (`nonstop up/down`) and the test fixtures both come through here, so the
HAProxy ingress, loopback binding and the clean-up are done the same way everywhere.
Each cluster has its own Ray temp folder, and `stop` ends that cluster's processes by pid
(Ray's own and Serve's haproxy, which `ray stop --force` would leave bound to the HTTP
port), never every Ray process on the machine: two clusters can run side by side.
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from nonstop.config import Settings
from nonstop_ops.cluster import ClusterError
from nonstop_ops.cluster.local_cluster import LOOPBACK, LocalCluster
from nonstop_ops.cluster.serve_config import check_user_config


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
    for port in (cluster.http_port, cluster.grpc_port):
        if port_open(port):
            raise ClusterError(f"port {port} is already taken (a stale haproxy? run `nonstop down`)")
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
        f"--temp-dir={cluster.ray_temp_dir}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]  # fmt: skip
    if cluster.num_cpus is not None:
        command.append(f"--num-cpus={cluster.num_cpus}")
    if cluster.object_store_bytes is not None:
        command.append(f"--object-store-memory={cluster.object_store_bytes}")
    env = {**os.environ, **cluster.environment(settings)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"`ray start` failed ({done.returncode}): {done.stderr.strip()[-2000:]}{_startup_logs(cluster)}")


def _startup_logs(cluster: LocalCluster, lines: int = 15) -> str:
    """The end of the GCS's and the raylet's own logs: `ray start` says only that the node
    did not register in time, these say why (a port taken, a crash)."""
    logs = Path(cluster.ray_temp_dir) / "session_latest" / "logs"
    told = []
    for name in ("gcs_server.err", "gcs_server.out", "raylet.err", "raylet.out"):
        with contextlib.suppress(OSError):
            tail = (logs / name).read_text(errors="replace").splitlines()[-lines:]
            if tail:
                told.append(f"\n--- {logs / name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "".join(told)


def stop(cluster: LocalCluster, timeout_s: float = 30.0) -> None:
    """End this cluster's processes, children first, and wait for its ports to close.

    A process the cluster starts while the first ones are ending (a worker a raylet was
    spawning) is caught by the next pass."""
    deadline = time.monotonic() + timeout_s
    while pids := cluster_pids(cluster):
        if time.monotonic() > deadline:
            raise ClusterError(f"processes {pids} of the cluster on port {cluster.gcs_port} outlived stopping it")
        _end(pids)
    ports = (cluster.http_port, cluster.grpc_port, cluster.gcs_port)
    while any(port_open(port) for port in ports):
        if time.monotonic() > deadline:
            raise ClusterError(f"ports {'/'.join(map(str, ports))} still open after stopping the cluster")
        time.sleep(0.2)


def cluster_pids(cluster: LocalCluster) -> list[int]:
    """Every process of this cluster, deepest descendants first.

    The roots are the processes whose command line names this cluster's Ray temp folder
    (GCS, raylet, dashboard, log monitor) or haproxy folder (Serve puts each config in a
    hashed subfolder of it), and Ray's client server, which names neither but is started
    with this cluster's GCS address and outlives the head otherwise; workers and the
    replicas are their descendants.
    """
    prefixes = [str(Path(folder).resolve()) + "/" for folder in (cluster.ray_temp_dir, cluster.haproxy_dir)]
    prefixes += [f"={p}" for p in prefixes]
    gcs_suffix = f":{cluster.gcs_port}"
    me = os.getpid()
    roots: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        names_folder = any(any(p in arg or arg == p[:-1] for p in prefixes) for arg in cmdline)
        client_server = "ray.util.client.server" in cmdline and any(
            arg.startswith("--address=") and arg.endswith(gcs_suffix) for arg in cmdline
        )
        if proc.info["pid"] != me and (names_folder or client_server):
            roots.append(proc)
    ordered: list[int] = []
    for root in roots:
        try:
            family = root.children(recursive=True)
        except psutil.Error:
            family = []
        ordered += [child.pid for child in reversed(family) if child.pid != me]
        ordered.append(root.pid)
    return list(dict.fromkeys(ordered))


def _end(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM to all, then SIGKILL to whatever is still alive after the grace period."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=grace_s)


def deploy(cluster: LocalCluster, config: dict[str, Any]) -> None:
    """What `serve deploy` does, with the HTTP listener pinned to this cluster's port."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
    from ray.serve.schema import ServeDeploySchema

    config = copy.deepcopy(config)
    config.setdefault("http_options", {}).update({"host": LOOPBACK, "port": cluster.http_port})
    if "grpc_options" in config:  # gRPC listens on the HTTP host (Serve 2.60's haproxy.py)
        config["grpc_options"]["port"] = cluster.grpc_port
    ServeDeploySchema.model_validate(config)
    check_user_config(config)
    ServeSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers()).deploy_applications(config)


@contextlib.contextmanager
def serving(cluster: LocalCluster, settings: Settings, config: dict[str, Any], model: str) -> Iterator[dict[str, Any]]:
    """A fresh cluster with `config` deployed and `model` ready (its metadata is yielded),
    stopped on the way out whatever happens: what every benchmark run starts from."""
    stop(cluster)
    start(cluster, settings)
    try:
        deploy(cluster, config)
        yield wait_ready(cluster, model)
    finally:
        stop(cluster)


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

