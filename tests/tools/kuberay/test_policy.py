"""Policies on the built manifests: what is reachable from outside, what every container
must carry, and the serving topology the RayService promises."""

from __future__ import annotations

from typing import Any

from nonstop_ops.cluster.serve_config import grpc_port, serve_port
from serve_app.wire.limits import Limits
from tests.tools.kuberay.manifests import Build, Manifest, PodTemplate, cluster_spec, pod_templates, ray_containers

INTERNAL_PORTS = {8265, 6379, 10001, 52365}  # dashboard, GCS, Ray client, dashboard agent
EXPOSING_TYPES = {"LoadBalancer", "NodePort"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
SERVING_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_worker_niceness": "0",
    # as `nonstop up` (nonstop_ops/cluster/local_cluster.py)
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    "RAY_SERVE_HAPROXY_NBTHREAD": "1",
    # gRPC messages bounded as HTTP bodies are, before parsing (serve_app/grpc_v2/servicer.py)
    "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(Limits().max_body_bytes),
}
CLIENT_PORTS = {serve_port(), grpc_port()}  # HTTP and OIP v2 gRPC, from serve_config.yaml


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def restricted_violations(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The Pod Security Standard 'restricted', as it applies to one container of a pod."""
    pod_context, context = pod.get("securityContext", {}), container.get("securityContext", {})
    problems = []
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if "ALL" not in context.get("capabilities", {}).get("drop", []):
        problems.append("capabilities do not drop ALL")
    if set(context.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
        problems.append("adds capabilities")
    if context.get("privileged"):
        problems.append("privileged")
    if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
        problems.append("runAsNonRoot is not true")
    if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
        problems.append("runs as uid 0")
    seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("no RuntimeDefault seccomp profile")
    return problems


def pod_violations(template: PodTemplate) -> list[str]:
    spec = template.spec
    problems = [f"host namespace {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} of type {kinds - RESTRICTED_VOLUMES}")
    for container in template.containers():
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(part, {}))
            if missing:
                problems.append(f"container {container['name']}: no {part} for {', '.join(sorted(missing))}")
        problems += [f"container {container['name']}: {p}" for p in restricted_violations(spec, container)]
    return problems


def test_every_container_has_resources_and_the_restricted_security_context(builds: dict[str, Build]) -> None:
    for build in builds.values():
        for obj in build.objects:
            for template in pod_templates(obj):
                problems = pod_violations(template)
                assert not problems, f"{build.name} {template.where}: " + "; ".join(problems)


def test_the_injected_autoscaler_sidecar_is_constrained_too(builds: dict[str, Build]) -> None:
    """KubeRay adds the autoscaler container to the head pod from autoscalerOptions."""
    for build in builds.values():
        for obj in build.objects:
            cluster = cluster_spec(obj)
            if cluster and cluster.get("enableInTreeAutoscaling"):
                options = cluster.get("autoscalerOptions", {})
                constraints = {k: options[k] for k in ("resources", "securityContext") if k in options}
                sidecar = {"name": "autoscaler", **constraints}
                head = cluster["headGroupSpec"]["template"]["spec"]
                problems = pod_violations(PodTemplate("autoscaler", {}, {**head, "containers": [sidecar]}))
                assert not problems, f"{build.name} {obj['kind']}: " + "; ".join(problems)


def exposed_ports(service_spec: dict[str, Any]) -> set[int]:
    return {p.get(key) for p in service_spec.get("ports", []) for key in ("port", "targetPort")} & INTERNAL_PORTS


def test_no_service_exposes_ray_internal_ports_outside_the_cluster(builds: dict[str, Build]) -> None:
    for build in builds.values():
        for obj in build.objects:
            name = f"{build.name} {obj['kind']}/{obj['metadata']['name']}"
            if obj["kind"] == "Service" and obj["spec"].get("type") in EXPOSING_TYPES:
                assert not exposed_ports(obj["spec"]), f"{name} exposes {exposed_ports(obj['spec'])}"
            serve_service = obj["spec"].get("serveService") if obj["kind"] == "RayService" else None
            if serve_service and serve_service.get("spec", {}).get("type") in EXPOSING_TYPES:
                assert not exposed_ports(serve_service["spec"]), f"{name} serveService"
            cluster = cluster_spec(obj)
            if cluster:
                head = cluster["headGroupSpec"]
                # The head Service carries the dashboard, GCS and client ports: never outside.
                assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{name} head serviceType"
                assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP", name
                assert not head.get("enableIngress"), f"{name} puts the dashboard behind an Ingress"


def test_network_policies_admit_clients_to_the_serve_port_only(builds: dict[str, Build]) -> None:
    for build in builds.values():
        for policy in build.of_kind("NetworkPolicy"):
            assert policy["spec"]["policyTypes"] == ["Ingress"], policy["metadata"]["name"]
            for rule in policy["spec"].get("ingress", []):
                sources = rule.get("from", [])
                assert not any("ipBlock" in s for s in sources), f"{build.name}: ipBlock sources are not reviewed here"
                if not sources:  # open to every client
                    ports = {p["port"] for p in rule.get("ports", [])}
                    assert ports == CLIENT_PORTS, f"{build.name} {policy['metadata']['name']} opens {ports or 'every port'}"


def app_pod_templates(build: Build) -> list[PodTemplate]:
    """Pods of the app: Ray's (serving, training, submitters) and prod's Redis."""
    return [t for obj in build.objects if cluster_spec(obj) or obj["kind"] == "Deployment" for t in pod_templates(obj)]


def test_every_app_pod_is_covered_by_the_internal_policy(builds: dict[str, Build]) -> None:
    """A pod the policy does not select would accept anything on every port."""
    for build in builds.values():
        internal = build.named("NetworkPolicy", "nonstop-ray-internal")
        for template in app_pod_templates(build):
            assert selects(internal["spec"]["podSelector"], template.labels), f"{build.name} {template.where}"


def serving_workers(build: Build) -> list[tuple[dict[str, Any], PodTemplate]]:
    service = build.one("RayService")
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    templates = [t for t in pod_templates(service) if "worker group" in t.where]
    return list(zip(groups, templates, strict=True))


def worker_pod_labels(group: dict[str, Any], template: PodTemplate) -> dict[str, str]:
    """A worker pod's labels: its template's, and those KubeRay sets and no template can
    override (common/pod.go: labelPod)."""
    return {**template.labels, "ray.io/node-type": "worker", "ray.io/group": group["groupName"]}


def test_pdb_guards_the_serving_workers_with_an_integer_budget(builds: dict[str, Build]) -> None:
    for build in builds.values():
        pdb = build.one("PodDisruptionBudget")
        budget = pdb["spec"]["minAvailable"]
        assert isinstance(budget, int) and "maxUnavailable" not in pdb["spec"], build.name
        workers = serving_workers(build)
        selector = pdb["spec"]["selector"]
        assert all(selects(selector, worker_pod_labels(g, t)) for g, t in workers), f"{build.name}: PDB misses workers"
        others = [t for t in app_pod_templates(build) if t not in [w for _, w in workers]]
        assert not any(selects(selector, t.labels) for t in others), f"{build.name}: PDB too wide"
        # KubeRay's group label: a worker group added later (another RayCluster's, a
        # RayJob's) is not counted, even with the same template labels.
        stray = {"groupName": "other"}
        assert not any(selects(selector, worker_pod_labels(stray, t)) for _, t in workers), f"{build.name}: any group"
        # Below the smallest worker count, or a node drain could never evict one.
        assert 1 <= budget < sum(g["minReplicas"] for g, _ in workers), build.name
        clients = build.named("NetworkPolicy", "nonstop-serve-clients")
        assert all(selects(clients["spec"]["podSelector"], t.labels) for _, t in workers), build.name


def test_the_rayservice_keeps_its_serving_contract(builds: dict[str, Build]) -> None:
    for build in builds.values():
        service: Manifest = build.one("RayService")
        spec, cluster = service["spec"], service["spec"]["rayClusterConfig"]
        assert spec["upgradeStrategy"] == {"type": "NewCluster"}, build.name
        # The head is the endpoint KubeRay checks itself before switching (issue 12).
        assert spec.get("excludeHeadPodFromServeSvc", False) is False, build.name
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", build.name
        assert cluster["authOptions"]["mode"] == "token", build.name
        assert sum(g["minReplicas"] for g in cluster["workerGroupSpecs"]) >= 2, build.name
        for container in ray_containers(service):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert SERVING_ENV.items() <= env.items(), f"{build.name} {container['name']}: {env}"
        for job in build.of_kind("RayJob"):
            job_cluster = cluster_spec(job)
            assert job_cluster and job_cluster["authOptions"]["mode"] == "token", f"{build.name} {job['metadata']['name']}"
