"""Every built object validates: Ray kinds against the KubeRay 1.7 CRDs, the rest against
the schemas of a current Kubernetes (kubernetes-validate, strict)."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from tests.tools.kuberay.manifests import RAY_KINDS, Build
from tests.tools.kuberay.schemas import CrdSchemas

KUBERNETES_VERSION = kubernetes_validate.latest_version()
WORKER_CONTAINER = ("spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec", "containers", 0)


def test_ray_objects_match_the_kuberay_crds(builds: dict[str, Build], crds: CrdSchemas) -> None:
    checked = 0
    for build in builds.values():
        for obj in build.objects:
            if obj["kind"] in RAY_KINDS:
                errors = crds.errors(obj)
                assert not errors, f"{build.name} {obj['kind']}/{obj['metadata']['name']}:\n" + "\n".join(errors)
                checked += 1
    assert checked >= 2 * len(builds), "every build has a RayService and a RayJob"


def test_core_objects_match_kubernetes_schemas(builds: dict[str, Build]) -> None:
    for build in builds.values():
        for obj in build.objects:
            if obj["kind"] not in RAY_KINDS:
                try:
                    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    name = f"{obj['kind']}/{obj['metadata']['name']}"
                    pytest.fail(f"{build.name} {name} (Kubernetes {KUBERNETES_VERSION}): {exc.message}")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("spec", "upgradeStrategy", "typo"), "x", "Additional properties"),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"), "2", "is not of type 'integer'"),
        (("spec", "rayClusterConfig", "authOptions", "mode"), "password", "is not one of"),
        (("spec", "rayClusterConfig", "headGroupSpec", "rayStartParams", "num-cpus"), 0, "is not of type 'string'"),
        ((*WORKER_CONTAINER, "resources", "limits", "cpu"), "two", "does not match"),
    ],
)
def test_the_crd_check_rejects_what_the_api_server_would(
    builds: dict[str, Build], crds: CrdSchemas, path: tuple[str | int, ...], value: object, expected: str
) -> None:
    """The validator is not vacuous: a typo, a wrong type, a bad enum or quantity fail it."""
    broken = copy.deepcopy(builds["base"].one("RayService"))
    node: Any = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(expected in e for e in crds.errors(broken)), crds.errors(broken)
