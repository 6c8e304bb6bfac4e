"""The batch-scoring RayJob (docs/batch.md): in every build, beside the training ones,
on the same image and registry settings, suspended until an operator starts it."""

from __future__ import annotations

from nonstop_ops.cluster.serve_config import deployment_config, load_serve_config
from serve_app.config import ModelTarget
from tests.tools.kuberay.manifests import SCORE_JOB, TRAIN_JOB, Build, entrypoint_commands, option, ray_containers


def test_the_scoring_job_scores_the_served_model_and_waits_to_be_started(builds: dict[str, Build]) -> None:
    target = ModelTarget.model_validate(deployment_config(load_serve_config())["user_config"])
    for build in builds.values():
        job = build.named("RayJob", SCORE_JOB)
        spec = job["spec"]
        assert spec["suspend"] is True, f"{build.name}: `kubectl apply` would start scoring"
        (score,) = entrypoint_commands(spec["entrypoint"])
        assert score[:2] == ["nonstop", "score"], build.name
        assert option(score, "--model") == target.model and option(score, "--data") and option(score, "--out"), build.name
        assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", build.name
        (workers,) = spec["rayClusterSpec"]["workerGroupSpecs"]
        assert workers["minReplicas"] >= 1, build.name


def test_the_scoring_pods_read_the_registry_as_training_does(builds: dict[str, Build]) -> None:
    """Same image, settings, Secrets and mounts as the training head: the version scored is
    read, verified and trusted as serving and training read it."""
    for build in builds.values():
        train_head = next(ray_containers(build.named("RayJob", TRAIN_JOB)))
        for container in ray_containers(build.named("RayJob", SCORE_JOB)):
            for key in ("image", "imagePullPolicy", "envFrom", "volumeMounts", "securityContext"):
                assert container.get(key) == train_head.get(key), f"{build.name} {container['name']}: {key} differs"
