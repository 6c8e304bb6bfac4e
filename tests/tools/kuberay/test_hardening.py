"""Issue 12's review findings that the built manifests themselves can show: Secrets that
must exist, the API token only where it is used, probes that survive a slow answer, the
metrics port open to Prometheus, Redis's password out of argv, an image that installs
what was tested."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version as installed_version
from typing import Any

from packaging.requirements import Requirement

from nonstop.config import MIN_SIGNING_KEY_CHARS, REQUIRE_SIGNATURES_ENV, Settings
from harness.switchover import prestop_of
from nonstop_ops import kube
from tests.tools.kuberay.manifests import KUBERAY, REPO_ROOT, Build, cluster_spec, pod_templates, ray_containers
from tests.tools.kuberay.test_policy import selects

SIGNING_SECRET = "nonstop-signing"
METRICS_PORT = 8080
SERVE_PORT = 8000
# What KubeRay 1.7 injects on RayService workers (utils/constant.go): 2 s, one failure.
KUBERAY_PROBE_TIMEOUT_S = 2
KUBERAY_PROBE_FAILURES = 1


def registry_containers(build: Build) -> list[tuple[str, dict[str, Any]]]:
    """Containers that read or write the registry: serving (Ray) and training."""
    found = []
    for obj in build.objects:
        if obj["kind"] in ("RayService", "RayJob"):
            found += [(f"{obj['kind']} {c['name']}", c) for c in ray_containers(obj)]
        if obj["kind"] == "CronJob":
            found += [(f"CronJob {c['name']}", c) for t in pod_templates(obj) for c in t.containers()]
    return found


def test_the_signing_key_secret_is_required_wherever_the_registry_is_used(builds: dict[str, Build]) -> None:
    for build in builds.values():
        containers = registry_containers(build)
        assert len(containers) >= 4, build.name
        for where, container in containers:
            refs = [e["secretRef"] for e in container.get("envFrom", []) if "secretRef" in e]
            (signing,) = [r for r in refs if r["name"] == SIGNING_SECRET] or [None]
            assert signing is not None, f"{build.name} {where}: no {SIGNING_SECRET} Secret"
            assert not signing.get("optional"), f"{build.name} {where}: a missing signing key would turn checks off"


def test_only_the_autoscaler_gets_a_kubernetes_api_token(builds: dict[str, Build]) -> None:
    for build in builds.values():
        for account in build.of_kind("ServiceAccount"):
            assert account.get("automountServiceAccountToken") is False, build.name
        for obj in build.objects:
            for template in pod_templates(obj):
                where = f"{build.name} {template.where}"
                assert template.spec.get("automountServiceAccountToken") is not True, f"{where}: token in every container"
                token_volumes = {
                    v["name"]
                    for v in template.spec.get("volumes", [])
                    if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))
                }
                for container in template.containers():
                    mounted = {m["name"] for m in container.get("volumeMounts", [])}
                    assert not mounted & token_volumes, f"{where}: {container['name']} mounts the API token"
            cluster = cluster_spec(obj)
            if cluster and cluster.get("enableInTreeAutoscaling"):
                head = cluster["headGroupSpec"]["template"]["spec"]
                token_volumes = {v["name"] for v in head.get("volumes", []) if "projected" in v}
                mounts = {m["name"] for m in cluster["autoscalerOptions"].get("volumeMounts", [])}
                assert mounts & token_volumes, f"{build.name}: the autoscaler cannot reach the API"


def worker_containers(build: Build) -> list[dict[str, Any]]:
    groups = build.one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return [g["template"]["spec"]["containers"][0] for g in groups]


def test_worker_readiness_probe_survives_a_slow_answer(builds: dict[str, Build]) -> None:
    """Set in the manifest, KubeRay injects none; KubeRay's own takes a pod out of the
    serve Service on one answer slower than 2 s."""
    for build in builds.values():
        for container in worker_containers(build):
            probe = container.get("readinessProbe")
            assert probe, f"{build.name}: KubeRay would inject its 2 s / 1 failure probe"
            assert probe["timeoutSeconds"] > KUBERAY_PROBE_TIMEOUT_S, build.name
            assert probe["failureThreshold"] > KUBERAY_PROBE_FAILURES, build.name
            assert probe.get("successThreshold", 1) == 1, build.name
            command = " ".join(probe["exec"]["command"])
            assert f"localhost:{SERVE_PORT}/-/healthz" in command, f"{build.name}: the probe skips the Serve ingress"
            for timeout in re.findall(r"-T (\d+)", command):
                assert int(timeout) < probe["timeoutSeconds"], f"{build.name}: a wget outlives the probe"


def test_prometheus_can_scrape_every_ray_pod(builds: dict[str, Build]) -> None:
    for build in builds.values():
        rules = [
            rule
            for policy in build.of_kind("NetworkPolicy")
            for rule in policy["spec"].get("ingress", [])
            if any("namespaceSelector" in s for s in rule.get("from", []))
            and METRICS_PORT in {p["port"] for p in rule.get("ports", [])}
        ]
        assert rules, f"{build.name}: no policy lets a scraper reach port {METRICS_PORT}"
        scraped = [
            p for p in build.of_kind("NetworkPolicy")
            if any(r in p["spec"].get("ingress", []) for r in rules)
        ]  # fmt: skip
        service = build.one("RayService")
        for template in pod_templates(service):
            if "submitter" in template.where:
                continue
            assert any(selects(p["spec"]["podSelector"], template.labels) for p in scraped), template.where
        for container in ray_containers(service):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert ports.get("metrics") == METRICS_PORT, f"{build.name} {container['name']}"


def test_redis_password_stays_out_of_argv_and_env_and_its_image_is_pinned() -> None:
    from tests.tools.kuberay.manifests import load_all

    (deployment,) = [o for o in load_all((KUBERAY / "overlays/prod/redis.yaml").read_text()) if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = " ".join(container.get("command", []) + container.get("args", []))
    assert "$(" not in argv.replace("$(cat /run/secrets/redis/password)", ""), "Kubernetes expands $(VAR) into argv"
    assert "--requirepass" not in argv, "the password would be in redis-server's argv"
    assert not container.get("env"), "the password would be in the environment"
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", container["image"]), container["image"]


def test_dockerfile_installs_the_tested_versions_and_checks_the_installed_copy() -> None:
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    ignore = (KUBERAY / "Dockerfile.dockerignore").read_text().splitlines()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    for package in packages:
        assert f"COPY --chown=1000:100 {package} ./{package}" in dockerfile, f"the image misses {package}"
        assert f"!{package}/" in ignore, f"the build context misses {package}"
    assert "--constraint constraints.txt" in dockerfile and "!kuberay/constraints.txt" in ignore
    assert "cd / && python -P -c" in dockerfile, "the import check would import the copied sources"


def test_constraints_pin_runtime_dependencies_within_pyproject() -> None:
    """Pins that pyproject.toml allows (the build would not resolve otherwise) and the
    tested ray. A dependency added since the file was written is not pinned yet (it would
    float in the image): `python -m nonstop_ops.kube` rewrites the file from the
    environment; this test does not fail for it, so adding a dependency never blocks."""
    pins = dict(
        line.split("==", 1) for line in (KUBERAY / kube.CONSTRAINTS_NAME).read_text().splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    direct = [Requirement(line) for line in pyproject["project"]["dependencies"]]
    pinned = 0
    for requirement in direct:
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in pins:
            pinned += 1
            assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement.specifier}"
    assert pinned >= len(direct) - 3, "most dependencies float in the image: run `python -m nonstop_ops.kube`"
    assert pins["ray"] == installed_version("ray"), "the image's ray is not the tested one"


# Seconds a deleted pod keeps accepting before HAProxy stops listening: the removal of its
# endpoint reaching kube-proxy on every node. SIGTERM handling needs room after the hook.
MIN_PROPAGATION_WAIT_S = 3
SIGTERM_ROOM_S = 5


def test_serving_pods_drain_their_ingress_before_sigterm(builds: dict[str, Build]) -> None:
    """A deleted pod keeps accepting while its endpoint removal propagates, then HAProxy is
    soft-stopped (SIGUSR1) and drains, all before SIGTERM and within the grace period:
    after a switch clients hold keep-alive connections to the old cluster, and on a node
    drain or a scale-down kube-proxy still sends new ones for a moment."""
    for build in builds.values():
        service = build.one("RayService")
        for template, container in zip(
            [t for t in pod_templates(service) if "submitter" not in t.where], ray_containers(service), strict=True
        ):
            where = f"{build.name} {template.where}"
            command = " ".join(container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
            assert "haproxy" in command and "kill -USR1" in command, f"{where}: no drain"
            prestop = prestop_of(container)
            assert prestop is not None and prestop.wait_s >= MIN_PROPAGATION_WAIT_S, f"{where}: stops listening first"
            assert prestop.drain_s > 0, f"{where}: no time to answer what is in flight"
            grace = template.spec.get("terminationGracePeriodSeconds", 30)
            assert prestop.total_s + SIGTERM_ROOM_S <= grace, f"{where}: the hook outlasts the grace period"


def test_the_old_prestop_hook_is_refused() -> None:
    """The hook before issue 24 (soft-stop first, sleep after) fails the check above."""
    old = {"lifecycle": {"preStop": {"exec": {"command": ["bash", "-c", "kill -USR1 haproxy; sleep 10"]}}}}
    prestop = prestop_of(old)
    assert prestop is not None and prestop.wait_s < MIN_PROPAGATION_WAIT_S


def test_the_head_is_a_serve_endpoint_clients_may_reach(builds: dict[str, Build]) -> None:
    for build in builds.values():
        service = build.one("RayService")
        assert service["spec"].get("excludeHeadPodFromServeSvc", False) is False, build.name
        clients = build.named("NetworkPolicy", "nonstop-serve-clients")
        serving = [t for t in pod_templates(service) if "submitter" not in t.where]
        assert all(selects(clients["spec"]["podSelector"], t.labels) for t in serving), build.name


def test_prod_refuses_unsigned_registries(builds: dict[str, Build]) -> None:
    """The prod overlay turns the refusal on explicitly, for serving and training alike."""
    prod = builds["overlays/prod"]
    (config,) = [c for c in prod.of_kind("ConfigMap") if c["metadata"]["name"].startswith("nonstop-config")]
    value = config["data"][REQUIRE_SIGNATURES_ENV]
    key = "k" * MIN_SIGNING_KEY_CHARS
    assert Settings(require_signatures=value, signing_key=key).signatures_required, value
    assert len(registry_containers(prod)) >= 4
    for where, container in registry_containers(prod):
        names = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
        assert config["metadata"]["name"] in names, f"prod {where} does not read {REQUIRE_SIGNATURES_ENV}"


def test_the_rollback_command_runs_on_the_serving_clusters_head() -> None:
    """During an upgrade two clusters have a head: the docs pick the active cluster's."""
    docs = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    section = docs.split("## Rolling back", 1)[1].split("\n## ", 1)[0]
    assert "{.status.activeServiceStatus.rayClusterName}" in section
    assert 'ray.io/cluster=$cluster,ray.io/node-type=head' in section
    assert "head -n 1" not in section, "the first head listed may be the pending or the old cluster's"
    assert "patch cronjob nonstop-train" in section


def test_every_rayjob_deadline_leaves_room_for_its_cluster_to_start(builds: dict[str, Build]) -> None:
    """activeDeadlineSeconds counts from the RayJob's start, before its cluster exists
    (rayjob_controller.go: Status.StartTime); the entrypoint's `timeout` from the job's. The
    cluster start has its own budget (preRunningDeadlineSeconds), and the deadline covers
    that budget plus the timeout, so `timeout` ends a slow training before KubeRay gives up
    on a Ray job it would leave running."""
    for build in builds.values():
        for job in build.of_kind("RayJob"):
            spec, where = job["spec"], f"{build.name} {job['metadata']['name']}"
            (limit,) = [int(s) for s in re.findall(r"^timeout (\d+) ", spec["entrypoint"])]
            start_budget = spec.get("preRunningDeadlineSeconds")
            assert start_budget, f"{where}: a cluster that never starts is never given up on"
            assert spec["activeDeadlineSeconds"] > start_budget + limit, f"{where}: the deadline can beat `timeout`"


def test_the_shared_claim_names_its_storage_class_where_an_overlay_sets_one(builds: dict[str, Build]) -> None:
    """The variant asks for the cluster's default class (it names none); the dev overlay
    sets kind's, the way any overlay sets its own (a patch on spec.storageClassName)."""
    assert "storageClassName" not in builds["variants/pvc-registry"].one("PersistentVolumeClaim")["spec"]
    assert builds["overlays/dev"].one("PersistentVolumeClaim")["spec"]["storageClassName"] == "standard"
