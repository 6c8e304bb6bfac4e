"""Promotion by config: pinning a version is a serveConfigV2 change, applied in place.

The patch goes through `kubectl patch --local` as an operator's would go through
`kubectl patch`, and the result must still be a valid RayService whose RayCluster spec
is untouched: KubeRay then updates the Serve applications instead of building a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import ModelTarget
from tests.tools.kuberay.manifests import Build, load_all, run_kubectl
from tests.tools.kuberay.schemas import CrdSchemas

PINNED_VERSION = 3


def pin(serve_config_v2: str, version: int) -> str:
    """serveConfigV2 with the ModelServer pinned to one version instead of an alias."""
    config = yaml.safe_load(serve_config_v2)
    for application in config["applications"]:
        for deployment in application.get("deployments", []):
            if deployment["name"] == "ModelServer":
                deployment["user_config"].pop("alias", None)
                deployment["user_config"]["version"] = version
    return yaml.safe_dump(config, sort_keys=False)


def user_configs(serve_config_v2: str) -> list[dict[str, Any]]:
    config = ServeDeploySchema.model_validate(yaml.safe_load(serve_config_v2))
    return [d.user_config for a in config.applications for d in a.deployments if d.user_config is not None]


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_pinning_a_version_with_kubectl_patch_keeps_a_valid_rayservice(
    builds: dict[str, Build], crds: CrdSchemas, kubectl: str, kube_tmp: Path, overlay: str
) -> None:
    service = builds[overlay].one("RayService")
    source = kube_tmp / f"{overlay.replace('/', '-')}-rayservice.yaml"
    source.write_text(yaml.safe_dump(service))
    patch = {"spec": {"serveConfigV2": pin(service["spec"]["serveConfigV2"], PINNED_VERSION)}}

    output = run_kubectl(
        kubectl, "patch", "--local", "-f", str(source), "--type", "merge", "-p", json.dumps(patch), "-o", "yaml",
        tmp=kube_tmp,
    )  # fmt: skip
    (patched,) = load_all(output)

    assert crds.errors(patched) == []
    (target,) = [ModelTarget.model_validate(c) for c in user_configs(patched["spec"]["serveConfigV2"])]
    assert (target.version, target.followed_alias) == (PINNED_VERSION, None)
    assert patched["spec"]["rayClusterConfig"] == service["spec"]["rayClusterConfig"], "would start a new RayCluster"
    assert {k: v for k, v in patched["spec"].items() if k != "serveConfigV2"} == {
        k: v for k, v in service["spec"].items() if k != "serveConfigV2"
    }
