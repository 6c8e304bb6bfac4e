"""KubeRay 1.7's NewCluster switchover, reproduced with real local Ray clusters.

Each local Ray cluster plays one RayCluster of the RayService; a TCP forwarder
(harness/forwarder.py) plays the serve Service. What moves traffic is only what
moves it on Kubernetes, with the timings of the manifests:

- the operator's reconcile loop (rayservice_controller.go: Reconcile, every 2 s):
  the head pod's serve label from a 2 s proxy health check when the head is not excluded
  (updateHeadPodServeLabel), then the serveConfigV2 submitted to the pending cluster, or
  to the active one when there is none pending, through the dashboard REST API with the
  token (reconcileServe, checkIfNeedSubmitServeApplications), then the Service's selector
  switched to the pending cluster in the same pass once every application reports RUNNING
  (getAndCheckServeStatus), and the old cluster deleted `deletion_delay_s` later
  (cleanUpRayClusterInstance, rayClusterDeletionDelaySeconds);
- the kubelet: each serving worker pod's readiness probe with the manifest's initial
  delay, period, timeout and thresholds (or, unset, what KubeRay injects: common/pod.go,
  utils/constant.go), probing the Serve ingress `/-/healthz` for "success"; and a pod's
  deletion: its preStop hook as the manifest writes it (wait, HAProxy soft-stop, drain),
  cut at terminationGracePeriodSeconds, then the pod's processes stopped;
- the endpoint removal of a pod deleted while its cluster serves (a node drain, a
  scale-down): it reaches kube-proxy `propagation_s` after the kubelet starts the preStop
  hook, and until then new connections still go to the pod (`RayServiceSim.delete_pod`).

A local cluster is one node, so its "head" and "worker" endpoints all lead to its one
Serve ingress port; the endpoints differ in what makes them ready, which is the point.
Not reproduced: scheduling, image pulls, the endpoint controller's and kube-proxy's own
delays for a ready endpoint (it takes effect at once here; only a deleted pod's removal
is delayed, by the caller's `propagation_s`), the raylet part of the probe.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import yaml

from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster import ClusterError
from nonstop_ops.cluster.serve_client import serve_application_statuses, submit_serve_config
from harness.forwarder import Forwarder

RECONCILE_PERIOD_S = 2.0  # ServiceDefaultRequeueDuration
HEAD_CHECK_TIMEOUT_S = 2.0  # RayHTTPClientDirectTimeoutSeconds
HEALTH_PATH = "/-/healthz"


@dataclass(frozen=True)
class Probe:
    """A Kubernetes readinessProbe's timing."""

    initial_delay_s: float
    period_s: float
    timeout_s: float
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def of(cls, probe: dict[str, Any]) -> Probe:
        """From a manifest's readinessProbe, with Kubernetes' defaults for what it omits."""
        return cls(
            initial_delay_s=probe.get("initialDelaySeconds", 0),
            period_s=probe.get("periodSeconds", 10),
            timeout_s=probe.get("timeoutSeconds", 1),
            success_threshold=probe.get("successThreshold", 1),
            failure_threshold=probe.get("failureThreshold", 3),
        )


# What KubeRay 1.7 injects on a RayService worker without a readinessProbe
# (common/pod.go: initLivenessAndReadinessProbe; utils/constant.go).
KUBERAY_WORKER_PROBE = Probe(initial_delay_s=10, period_s=5, timeout_s=2, success_threshold=1, failure_threshold=1)


@dataclass(frozen=True)
class PreStop:
    """A preStop hook that soft-stops HAProxy (SIGUSR1): the seconds it sleeps before the
    soft-stop (while the pod's endpoint removal propagates) and after it (the drain)."""

    wait_s: float
    drain_s: float

    @property
    def total_s(self) -> float:
        return self.wait_s + self.drain_s


# The hook before issue 24: soft-stop at once, then 10 s (benchmarks/switchover.py --old-prestop).
OLD_PRESTOP = PreStop(wait_s=0.0, drain_s=10.0)
DEFAULT_GRACE_S = 30.0  # terminationGracePeriodSeconds when a pod spec leaves it out


@dataclass(frozen=True)
class ServiceSettings:
    """The RayService settings the switchover and a pod's deletion depend on."""

    exclude_head: bool
    worker_probe: Probe
    workers: int = 2
    deletion_delay_s: float = 60.0
    prestop: PreStop | None = None
    grace_s: float = DEFAULT_GRACE_S

    @property
    def termination_s(self) -> float:
        """How long a deleted pod may take: its preStop hook, cut at the grace period."""
        return min(self.prestop.total_s, self.grace_s) if self.prestop else 0.0

    @classmethod
    def of(cls, service: dict[str, Any], deletion_delay_s: float) -> ServiceSettings:
        """From a built RayService; its first worker group's probe, or KubeRay's."""
        (group, *_) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        probe = container.get("readinessProbe")
        return cls(
            exclude_head=service["spec"].get("excludeHeadPodFromServeSvc", False),
            worker_probe=Probe.of(probe) if probe else KUBERAY_WORKER_PROBE,
            workers=group.get("minReplicas", group.get("replicas", 1)),
            deletion_delay_s=deletion_delay_s,
            prestop=prestop_of(container),
            grace_s=float(pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)),
        )


def prestop_of(container: dict[str, Any]) -> PreStop | None:
    """The sleeps before and after the HAProxy soft-stop (SIGUSR1) of a container's preStop
    hook; None when the hook does not soft-stop HAProxy."""
    command = " ".join(container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
    if "haproxy" not in command or "-USR1" not in command:
        return None
    before, after = command.split("-USR1", 1)

    def slept(text: str) -> float:
        return sum(float(s) for s in re.findall(r"\bsleep (\d+(?:\.\d+)?)", text))

    return PreStop(wait_s=slept(before), drain_s=slept(after))


def local_serve_config(serve_config_v2: str, cluster: local.LocalCluster, poll_interval_s: float) -> str:
    """The RayService's serveConfigV2 for a one-node local cluster: the ingress on loopback
    at this cluster's port, and no one-replica-per-node rule (one node holds them all)."""
    config = yaml.safe_load(serve_config_v2)
    config["http_options"] = {**config.get("http_options", {}), "host": local.LOOPBACK, "port": cluster.http_port}
    if "grpc_options" in config:
        config["grpc_options"]["port"] = cluster.grpc_port
    for application in config["applications"]:
        for deployment in application.get("deployments", []):
            deployment.pop("max_replicas_per_node", None)
            if "user_config" in deployment:
                deployment["user_config"]["poll_interval_s"] = poll_interval_s
    return yaml.safe_dump(config, sort_keys=False)


def unhealthy(cluster: local.LocalCluster, timeout_s: float, delay_s: float = 0.0) -> str | None:
    """Why the Serve ingress did not say "success" within `timeout_s` (None: it did);
    `delay_s` is a pod too busy to answer at once, spent inside the timeout as a slow
    answer would be."""
    started = time.monotonic()
    if delay_s:
        time.sleep(min(delay_s, timeout_s))
    left = timeout_s - (time.monotonic() - started)
    if left <= 0:
        return "no time left to ask"
    try:
        answer = httpx.get(cluster.http_url + HEALTH_PATH, timeout=left)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} after {time.monotonic() - started:.1f}s"
    if answer.status_code == 200 and "success" in answer.text:
        return None
    return f"{answer.status_code} {answer.text[:60]!r}"


@dataclass
class Event:
    at: float  # time.time(), comparable with the load's samples
    what: str


@dataclass
class RayServiceSim:
    """The operator and the kubelets for one RayService, over real local clusters."""

    settings: ServiceSettings
    serve_config_v2: str
    forwarder: Forwarder
    poll_interval_s: float = 0.5
    active: local.LocalCluster | None = None
    pending: local.LocalCluster | None = None
    events: list[Event] = field(default_factory=list)
    _cache: dict[str, str] = field(default_factory=dict)  # cluster → serveConfigV2 last sent
    _doomed: dict[str, tuple[float, local.LocalCluster]] = field(default_factory=dict)
    _said: dict[str, str] = field(default_factory=dict)  # what was checked → its last answer
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.events.append(Event(time.time(), what))

    def __enter__(self) -> RayServiceSim:
        self._spawn(self._operator)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- Kubernetes objects appearing ------------------------------------------------

    def create_pending(self, cluster: local.LocalCluster, probe_delay_s: float = 0.0) -> None:
        """A new RayCluster's pods are up (the caller started the local cluster): its head
        and worker endpoints exist, not ready; each worker's kubelet starts probing.
        `probe_delay_s`: its workers answer every probe that late (busy pods)."""
        name = cluster.name
        self.forwarder.add(f"{name}/head", name, cluster.http_port)
        for index in range(self.settings.workers):
            self.forwarder.add(f"{name}/worker-{index}", name, cluster.http_port)
            self._spawn(lambda i=index: self._kubelet(cluster, f"{name}/worker-{i}", probe_delay_s))
        self.pending = cluster
        self.note(f"pending cluster {name} created")

    # -- the kubelet --------------------------------------------------------------------

    def _kubelet(self, cluster: local.LocalCluster, endpoint: str, delay_s: float) -> None:
        probe = self.settings.worker_probe
        if self._stop.wait(probe.initial_delay_s):
            return
        ready, successes, failures = False, 0, 0
        while not self._stop.is_set() and endpoint in self._endpoint_names():
            began = time.monotonic()
            why = unhealthy(cluster, probe.timeout_s, delay_s)
            self._checked(endpoint, why)
            if why is None:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
            if not ready and successes >= probe.success_threshold:
                ready = True
                self.forwarder.set_ready(endpoint, True)
                self.note(f"{endpoint} ready")
            elif ready and failures >= probe.failure_threshold:
                ready = False
                self.forwarder.set_ready(endpoint, False)
                self.note(f"{endpoint} not ready")
            self._stop.wait(max(0.0, probe.period_s - (time.monotonic() - began)))

    def _endpoint_names(self) -> set[str]:
        return set(self.forwarder.endpoint_names())

    # -- the operator -------------------------------------------------------------------

    def _operator(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self._reconcile()
            except (httpx.HTTPError, ClusterError) as exc:
                self.note(f"reconcile error: {exc}")  # KubeRay requeues; so do we
            self._stop.wait(max(0.0, RECONCILE_PERIOD_S - (time.monotonic() - began)))

    def _reconcile(self) -> None:
        for cluster in (self.active, self.pending):
            if cluster is not None:
                self._label_head(cluster)
        target = self.pending or self.active
        if target is not None and self._serve_ready(target) and target is self.pending:
            old = self.active
            self.forwarder.select(target.name)
            self.active, self.pending = target, None
            self.note(f"service switched to {target.name}")
            if old is not None:
                self._doomed[old.name] = (time.monotonic() + self.settings.deletion_delay_s, old)
        for name, (when, cluster) in list(self._doomed.items()):
            if time.monotonic() >= when:
                del self._doomed[name]
                self.forwarder.remove_cluster(name)
                self.note(f"cluster {name} deleted")
                self._spawn(lambda c=cluster: self._terminate(c))

    def delete_pod(self, endpoint: str, cluster: local.LocalCluster, propagation_s: float) -> None:
        """A serving pod deleted (a node drain, a scale-down) while its cluster stays
        selected: the kubelet starts its preStop hook at once, while the endpoint's removal
        reaches kube-proxy `propagation_s` later; until then new connections still go to it."""
        self.note(f"pod {endpoint} deleted")
        self._spawn(lambda: self._terminate(cluster))

        def unroute() -> None:
            if not self._stop.wait(propagation_s):
                self.forwarder.remove(endpoint)
                self.note(f"{endpoint} out of the Service")

        self._spawn(unroute)

    def _terminate(self, cluster: local.LocalCluster) -> None:
        """Pod deletion: the preStop hook (its wait, the HAProxy soft-stop, its drain), cut
        at the grace period as the kubelet cuts it, then the pod's processes stopped."""
        prestop, grace = self.settings.prestop, self.settings.grace_s
        if prestop is not None:
            time.sleep(min(prestop.wait_s, grace))
            if prestop.wait_s < grace:
                self.note(f"{cluster.name}: HAProxy soft-stopped")
                soft_stop_haproxy(cluster)
                time.sleep(min(prestop.drain_s, grace - prestop.wait_s))
        local.stop(cluster)
        self.note(f"cluster {cluster.name} stopped")

    def _label_head(self, cluster: local.LocalCluster) -> None:
        """updateHeadPodServeLabel: excluded, the head never serves; else its proxy's health."""
        endpoint = f"{cluster.name}/head"
        why = "excluded" if self.settings.exclude_head else unhealthy(cluster, HEAD_CHECK_TIMEOUT_S)
        self._checked(endpoint, why)
        self.forwarder.set_ready(endpoint, why is None)

    def _checked(self, what: str, why: str | None, said: str | None = None) -> None:
        """A check's answer, noted when it differs from the previous one: what a failed
        run's report needs to tell a refused Service from a slow ingress or a restart."""
        said = said or ("healthy" if why is None else f"unhealthy: {why}")
        if self._said.get(what) != said:
            self._said[what] = said
            self.note(f"{what}: {said}")

    def _serve_ready(self, cluster: local.LocalCluster) -> bool:
        """reconcileServe: (re)submit when nothing is cached, no application exists, or the
        config changed; ready when there are applications and all are RUNNING."""
        if not local.is_running(cluster):
            return False  # the head pod is not ready yet
        statuses = serve_application_statuses(cluster)
        self._checked(f"{cluster.name} applications", None if statuses else "none", said=str(statuses))
        wanted = local_serve_config(self.serve_config_v2, cluster, self.poll_interval_s)
        if self._cache.get(cluster.name) != wanted or not statuses:
            submit_serve_config(cluster, wanted)
            self._cache[cluster.name] = wanted
            self.note(f"serve config submitted to {cluster.name}")
        return bool(statuses) and all(status == "RUNNING" for status in statuses.values())

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not within {timeout_s:.0f}s; events: {self.events[-8:]}")
            time.sleep(0.2)


def soft_stop_haproxy(cluster: local.LocalCluster) -> None:
    """What the preStop hook does in the pod: SIGUSR1 to every HAProxy (stop listening,
    answer what is in flight, close each connection after its answer)."""
    for pid in local.cluster_pids(cluster):
        try:
            process = psutil.Process(pid)
            if process.name() == "haproxy":
                process.send_signal(signal.SIGUSR1)
        except psutil.Error:
            continue


@dataclass(frozen=True)
class Timing:
    """How long each phase lasts; the test shortens what the benchmark runs in full."""

    rate: float = 20.0  # requests per second, open loop
    concurrency: int = 8
    settle_s: float = 5.0  # load before the trigger and after the last change
    deletion_delay_s: float = 60.0
    ready_timeout_s: float = 240.0
