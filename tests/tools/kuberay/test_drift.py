"""serve_app/serve_config.yaml stays the one source of truth, and versions agree everywhere.

The expected Kubernetes patches are spelled out here rather than imported from
nonstop_ops/kube.py, so this test checks the renderer instead of repeating it.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
from importlib.metadata import version as package_version
from typing import Any

import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from nonstop_ops import kube
from nonstop_ops.cluster.serve_config import SERVE_CONFIG_NAME, load_serve_config
from nonstop.registry import PRODUCTION
from serve_app.config import ModelTarget
from tests.tools.kuberay.manifests import (
    KUBERAY,
    TRAIN_JOB,
    Build,
    cluster_spec,
    entrypoint_commands,
    images,
    option,
    training_entrypoints,
)

IMAGE = "ghcr.io/example/nonstop"
# The documented Kubernetes patches (docs/kubernetes.md): everything else must be equal.
K8S_TOP_LEVEL = {"proxy_location": "EveryNode"}
K8S_HTTP_HOST = "0.0.0.0"
K8S_DEPLOYMENT_OPTIONS = {"max_replicas_per_node": 1}


def expected_applications(source: dict[str, Any]) -> list[dict[str, Any]]:
    applications = copy.deepcopy(source["applications"])
    for application in applications:
        for deployment in application.get("deployments", []):
            deployment.update(K8S_DEPLOYMENT_OPTIONS)
    return applications


def serve_config_of(build: Build) -> dict[str, Any]:
    return yaml.safe_load(build.one("RayService")["spec"]["serveConfigV2"])


def test_generated_serve_config_patch_is_current() -> None:
    assert kube.is_current(KUBERAY), (
        f"{kube.generated_path(KUBERAY)} does not match {SERVE_CONFIG_NAME}: "
        "run `python -m nonstop_ops.kube` and commit the result"
    )


def test_serve_config_v2_is_serve_config_yaml_plus_documented_patches(builds: dict[str, Build]) -> None:
    source = load_serve_config()
    for build in builds.values():
        built = serve_config_of(build)
        assert built["applications"] == expected_applications(source), f"{build.name}: applications drifted"
        assert built["http_options"] == {**source["http_options"], "host": K8S_HTTP_HOST}, build.name
        others = {k: v for k, v in source.items() if k not in ("applications", "http_options", *K8S_TOP_LEVEL)}
        assert {k: built.get(k) for k in others} == others, f"{build.name}: top-level settings drifted"
        for key, value in K8S_TOP_LEVEL.items():
            assert built[key] == value, f"{build.name}: {key}"


def test_serve_config_v2_is_a_valid_serve_config(builds: dict[str, Build]) -> None:
    for build in builds.values():
        config = ServeDeploySchema.model_validate(serve_config_of(build))
        for application in config.applications:
            for deployment in application.deployments:
                if deployment.user_config is not None:
                    ModelTarget.model_validate(deployment.user_config)


def test_serve_port_is_the_port_pods_and_policies_open(builds: dict[str, Build]) -> None:
    """HTTP and gRPC: on every serving pod (the gRPC one named `serve-*`, which KubeRay
    puts on the serve Service) and in the clients' policy."""
    for build in builds.values():
        config = serve_config_of(build)
        port, grpc = config["http_options"]["port"], config["grpc_options"]["port"]
        cluster = build.one("RayService")["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for group in groups:
            ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
            assert (ports.get("serve"), ports.get("serve-grpc")) == (port, grpc), f"{build.name}: {group.get('groupName', 'head')}"
        client_policy = build.named("NetworkPolicy", "nonstop-serve-clients")
        assert [p["port"] for rule in client_policy["spec"]["ingress"] for p in rule["ports"]] == [port, grpc]


def serve_user_config() -> dict[str, Any]:
    (application,) = load_serve_config()["applications"]
    (deployment,) = application["deployments"]
    return deployment["user_config"]


def test_training_trains_and_promotes_the_model_serving_follows(builds: dict[str, Build]) -> None:
    target = ModelTarget.model_validate(serve_user_config())
    for build in builds.values():
        for kind, entrypoint in training_entrypoints(build).items():
            commands = entrypoint_commands(entrypoint)
            (train,) = [c for c in commands if c[:2] == ["nonstop", "train"]]
            assert option(train, "--model") == target.model, f"{build.name} {kind}"
            assert "--promote" in train, f"{build.name} {kind}: trains without promoting"
            if target.followed_alias is not None:  # a pinned version follows no alias
                assert (option(train, "--alias") or PRODUCTION) == target.followed_alias, f"{build.name} {kind}"


def test_one_off_job_runs_what_the_schedule_runs(builds: dict[str, Build]) -> None:
    """The RayJob's head container is the CronJob's container but for Ray's ports; both
    train the same way (the entrypoint, the command)."""
    for build in builds.values():
        cron = build.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        head = build.named("RayJob", TRAIN_JOB)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        for key in ("image", "imagePullPolicy", "envFrom", "volumeMounts", "resources", "securityContext"):
            assert cron.get(key) == head.get(key), f"{build.name}: {key} differs"
        entrypoints = training_entrypoints(build)
        assert entrypoint_commands(entrypoints["RayJob"]) == entrypoint_commands(entrypoints["CronJob"]), build.name


def test_scheduled_training_never_overlaps_backfills_or_piles_up(builds: dict[str, Build]) -> None:
    """Item 4 of issue 12: one run at a time, no burst of missed ticks, bounded history, and
    a deadline that stops the training itself (timeout in the RayJob, the Job's kill)."""
    for build in builds.values():
        assert not build.of_kind("RayCronJob"), f"{build.name}: RayCronJob (1.7) has no concurrency policy"
        cron = build.one("CronJob")["spec"]
        assert cron["concurrencyPolicy"] == "Forbid", build.name
        assert 0 < cron["startingDeadlineSeconds"] <= 3600, build.name
        assert cron["successfulJobsHistoryLimit"] <= 3 and cron["failedJobsHistoryLimit"] <= 3, build.name
        job = cron["jobTemplate"]["spec"]
        assert job["backoffLimit"] == 0 and job["activeDeadlineSeconds"] > 0, build.name
        for ray_job in [job["spec"] for job in build.of_kind("RayJob")]:
            words = shlex.split(ray_job["entrypoint"])
            assert words[0] == "timeout", f"{build.name}: the RayJob's deadline would leave the Ray job running"
            assert int(words[1]) < ray_job["activeDeadlineSeconds"], build.name


def test_ray_versions_agree_with_the_installed_ray(builds: dict[str, Build]) -> None:
    installed = ray.__version__
    for build in builds.values():
        for obj in build.objects:
            cluster = cluster_spec(obj)
            if cluster:
                assert cluster["rayVersion"] == installed, f"{build.name} {obj['kind']}"
        ours = {i for i in images(build.objects) if i.startswith(f"{IMAGE}:")}
        assert ours, f"{build.name} runs no {IMAGE} image"
        expected_tag = f"{package_version('nonstop')}-ray{installed}"
        assert ours == {f"{IMAGE}:{expected_tag}"}, f"{build.name}: {ours}"


def test_dockerfile_builds_on_the_installed_ray_and_python() -> None:
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    (arg,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    (base,) = re.findall(r"^FROM (\S+)$", dockerfile, re.MULTILINE)
    assert arg == ray.__version__
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base == f"rayproject/ray:${{RAY_VERSION}}-{python}", f"{base}: not the ray image for {python}"
