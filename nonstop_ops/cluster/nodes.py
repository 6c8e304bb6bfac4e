"""Extra Ray worker nodes beside a local head, as KubeRay's worker pods are beside theirs.

Each worker node is a `ray start --address` of its own on loopback, with its own Ray
temp folder inside the head's (so `lifecycle.stop` of the cluster ends it too) and its
own dashboard-agent port; every other port is the kernel's choice. Serve spreads the
replicas over the nodes, so on one machine a node can be lost (`kill`: SIGKILL to every
process of that node at once, as a spot node vanishes), drained (`drain`: Ray's DrainNode,
as the autoscaler and KubeRay ask before removing a pod) or stopped (`stop`: SIGTERM, as
the kubelet ends a pod), and the replicas on the others keep answering.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field

from nonstop.config import Settings
from nonstop_ops.cluster import ClusterError
from nonstop_ops.cluster.lifecycle import _end, _ray_bin
from nonstop_ops.cluster.local_cluster import LOOPBACK, LocalCluster

# Ray puts sockets under <temp>/session_<date>_<pid>/sockets/ and Unix socket paths stop at
# 107 characters: a node's folder is the head's (36 at most, lifecycle.py) and "/n39" at most.
MAX_NODES = 39  # dashboard-agent ports base+961 .. base+999, below the next 1000 ports


class WorkerNode(BaseModel):
    """Worker node `index` (1, 2, ...) of a local cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster: LocalCluster
    index: int = Field(ge=1, le=MAX_NODES)
    num_cpus: int | None = Field(default=None, ge=1)

    @property
    def temp_dir(self) -> str:
        return f"{self.cluster.ray_temp_dir}/n{self.index}"

    @property
    def dashboard_agent_port(self) -> int:
        # LocalCluster.isolated puts the GCS at base+379 and its ports up to base+950:
        # the nodes' sit above them, at base+961 ...
        return self.cluster.gcs_port - 379 + 960 + self.index

    @property
    def name(self) -> str:
        return f"node {self.index} of the cluster on port {self.cluster.gcs_port}"


def start(node: WorkerNode, settings: Settings) -> None:
    """Start the node (nothing if it runs already); `ray start` returns once its raylet is up."""
    if pids(node):
        return
    command = [
        _ray_bin(), "start",
        f"--address={node.cluster.address}",
        f"--node-ip-address={LOOPBACK}",
        f"--temp-dir={node.temp_dir}",
        f"--dashboard-agent-listen-port={node.dashboard_agent_port}",
        "--min-worker-port=0", "--max-worker-port=0",
        "--disable-usage-stats",
    ]  # fmt: skip
    if node.num_cpus is not None:
        command.append(f"--num-cpus={node.num_cpus}")
    if node.cluster.object_store_bytes is not None:
        command.append(f"--object-store-memory={node.cluster.object_store_bytes}")
    env = {**os.environ, **node.cluster.environment(settings)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"`ray start` of {node.name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def joined(node: WorkerNode, timeout_s: float = 120.0) -> str:
    """The node's Ray id once the cluster counts it alive. Needs `ray.init` to the cluster."""
    deadline = time.monotonic() + timeout_s
    while (node_id := ray_node_id(node)) is None:
        if time.monotonic() > deadline:
            raise ClusterError(f"{node.name} is not alive in the cluster after {timeout_s:.0f}s")
        time.sleep(0.5)
    return node_id


def ray_node_id(node: WorkerNode) -> str | None:
    """The node's id among the cluster's alive nodes: the one whose object store lives in
    its temp folder (all nodes share the loopback address). Needs `ray.init` to the cluster."""
    import ray

    folder = str(Path(node.temp_dir).resolve()) + "/"
    for info in ray.nodes():
        if info.get("Alive") and str(info.get("ObjectStoreSocketName", "")).startswith(folder):
            return str(info["NodeID"])
    return None


def pids(node: WorkerNode) -> list[int]:
    """Every process of the node, deepest descendants first: those naming its temp folder
    (raylet, agents, log monitor) and theirs (the workers and replicas the raylet started)."""
    folder = str(Path(node.temp_dir).resolve())
    me = os.getpid()
    ordered: list[int] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        names_it = any(folder + "/" in arg or arg.endswith("=" + folder) or arg == folder for arg in cmdline)
        if proc.info["pid"] == me or not names_it:
            continue
        try:
            family = proc.children(recursive=True)
        except psutil.Error:
            family = []
        ordered += [child.pid for child in reversed(family) if child.pid != me]
        ordered.append(proc.info["pid"])
    return list(dict.fromkeys(ordered))


def kill(node: WorkerNode) -> list[int]:
    """SIGKILL to every process of the node in one pass, none warned: a machine gone.
    Returns the pids killed."""
    victims = pids(node)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    psutil.wait_procs([p for p in (_process(pid) for pid in victims) if p is not None], timeout=10)
    return victims


def stop(node: WorkerNode, timeout_s: float = 30.0) -> None:
    """SIGTERM to the node's processes, SIGKILL to what outlives the grace period."""
    deadline = time.monotonic() + timeout_s
    while found := pids(node):
        if time.monotonic() > deadline:
            raise ClusterError(f"processes {found} of {node.name} outlived stopping it")
        _end(found)


def drain(node: WorkerNode, node_id: str, deadline_s: float, reason: str = "DRAIN_NODE_REASON_PREEMPTION") -> None:
    """Ray's DrainNode with a deadline, as the autoscaler sends it before a node goes:
    the node takes no new work and Serve moves its replicas to the other nodes first."""
    command = [
        _ray_bin(), "drain-node",
        f"--address={node.cluster.address}",
        f"--node-id={node_id}",
        f"--reason={reason}",
        "--reason-message=nonstop: node drained",
        f"--deadline-remaining-seconds={int(deadline_s)}",
    ]  # fmt: skip
    env = {**os.environ, **node.cluster.client_environment()}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"`ray drain-node` of {node.name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _process(pid: int) -> Any:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None
