"""Every kustomization builds with the kubectl CI has, into the objects the issue asks for."""

from __future__ import annotations

from tests.tools.kuberay.manifests import SCORE_JOB, TRAIN_JOB, Build

OVERLAYS = ("overlays/dev", "overlays/prod")


def test_every_kustomization_builds(builds: dict[str, Build]) -> None:
    expected = {"base", "variants/pvc-registry", *OVERLAYS}
    assert expected <= set(builds), f"missing kustomizations: {expected - set(builds)}"
    for build in builds.values():
        assert build.objects, f"{build.name} built nothing"


def test_overlays_hold_the_whole_app(builds: dict[str, Build]) -> None:
    for name in OVERLAYS:
        build = builds[name]
        for kind in ("RayService", "CronJob", "ServiceAccount", "PodDisruptionBudget", "Namespace"):
            build.one(kind)
        assert {j["metadata"]["name"] for j in build.of_kind("RayJob")} == {TRAIN_JOB, SCORE_JOB}, name
        assert len(build.of_kind("NetworkPolicy")) >= 2, f"{name}: client and internal NetworkPolicies"
        namespaces = {o["metadata"].get("namespace") for o in build.objects if o["kind"] != "Namespace"}
        assert namespaces == {build.one("Namespace")["metadata"]["name"]}, f"{name}: objects outside its namespace"


def test_dev_keeps_the_registry_on_a_volume_and_prod_on_object_storage(builds: dict[str, Build]) -> None:
    def registry(build: Build) -> str:
        (config,) = [c for c in build.of_kind("ConfigMap") if c["metadata"]["name"].startswith("nonstop-config")]
        return config["data"]["NONSTOP_REGISTRY"]

    dev, prod = builds["overlays/dev"], builds["overlays/prod"]
    assert registry(dev).startswith("/mnt/nonstop/")
    assert dev.one("PersistentVolumeClaim")["metadata"]["name"] == "nonstop-storage"
    assert "nonstop-s3" not in str(dev.objects), "dev references the S3 Secret it has no use for"
    assert registry(prod).startswith("s3://")
    assert len(dev.one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]) == 1


def test_prod_autoscales_workers_and_keeps_gcs_state_in_redis(builds: dict[str, Build]) -> None:
    prod = builds["overlays/prod"]
    cluster = prod.one("RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (workers,) = cluster["workerGroupSpecs"]
    assert 2 <= workers["minReplicas"] < workers["maxReplicas"]
    port = prod.named("Service", "nonstop-redis")["spec"]["ports"][0]["port"]
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"] == f"nonstop-redis:{port}"
    assert cluster["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "nonstop-redis"


def test_generated_config_map_name_reaches_every_ray_object(builds: dict[str, Build]) -> None:
    """kustomize only renames references it knows; base/kustomizeconfig.yaml teaches it ours."""
    for build in builds.values():
        (config,) = [c for c in build.of_kind("ConfigMap") if c["metadata"]["name"].startswith("nonstop-config")]
        for where in (build.one("RayService"), build.one("CronJob"), *build.of_kind("RayJob")):
            kind = f"{where['kind']}/{where['metadata']['name']}"
            text = str(where)
            assert config["metadata"]["name"] in text, f"{build.name}: {kind} misses {config['metadata']['name']}"
            assert "'nonstop-config'" not in text, f"{build.name}: {kind} names the ConfigMap without its hash"
