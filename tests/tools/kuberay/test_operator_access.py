"""The NetworkPolicy lets the KubeRay operator reach the dashboard however it was installed.

Without it the operator cannot PUT serveConfigV2 nor read application statuses: the
RayService never serves. The operator's pod labels are read from KubeRay's own install
files (its kustomize `config/manager/manager.yaml` and `config/default/kustomization.yaml`,
its Helm chart's `values.yaml`), and the policy's namespace and label come from one
place, the `kuberay-operator` ConfigMap of kuberay/base/kustomization.yaml.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools.kuberay.manifests import KUBERAY, REPO_ROOT, Build, load_all, run_kubectl
from tests.tools.kuberay.test_policy import selects

SOURCE_ENV = "NONSTOP_KUBERAY_SRC"
OPERATOR_PORTS = {8265, 52365}  # dashboard (Serve REST API, jobs), dashboard agent
HELM_NAMESPACE = "kuberay-system"  # docs/kubernetes.md: helm install ... --namespace kuberay-system


def kuberay_source() -> Path:
    folder = Path(os.environ.get(SOURCE_ENV) or REPO_ROOT.parent / "shared" / "kuberay-src" / "v1.7.0")
    if not folder.is_dir():
        pytest.skip(f"KubeRay source not found at {folder}: set {SOURCE_ENV} to the v1.7.0 source folder")
    return folder


def kustomize_install() -> tuple[str, dict[str, str]]:
    """(namespace, operator pod labels) of KubeRay's own kustomize install."""
    config = kuberay_source() / "ray-operator" / "config"
    namespace = yaml.safe_load((config / "default" / "kustomization.yaml").read_text())["namespace"]
    deployment = yaml.safe_load((config / "manager" / "manager.yaml").read_text())
    return namespace, deployment["spec"]["template"]["metadata"]["labels"]


def helm_install(release: str = "kuberay-operator") -> tuple[str, dict[str, str]]:
    """(namespace, operator pod labels) of the Helm chart with its default values
    (templates/deployment.yaml: name, instance and component labels)."""
    values = yaml.safe_load((kuberay_source() / "helm-chart" / "kuberay-operator" / "values.yaml").read_text())
    labels = {
        "app.kubernetes.io/name": values["nameOverride"],
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/component": values["componentOverride"],
    }
    return HELM_NAMESPACE, labels


def admits_operator(build: Build, namespace: str, labels: dict[str, str]) -> bool:
    """Some NetworkPolicy rule lets a pod with `labels` in `namespace` reach every operator port."""
    reachable: set[int] = set()
    for policy in build.of_kind("NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if set(peer) != {"namespaceSelector", "podSelector"}:
                    continue
                if selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}) and selects(
                    peer["podSelector"], labels
                ):
                    reachable |= {p["port"] for p in rule.get("ports", [])}
    return OPERATOR_PORTS <= reachable


def test_a_helm_installed_operator_reaches_the_dashboard(builds: dict[str, Build]) -> None:
    namespace, labels = helm_install()
    for name, build in builds.items():
        assert admits_operator(build, namespace, labels), f"{name}: the Helm-installed operator is locked out"


def test_a_kustomize_installed_operator_reaches_it_once_its_namespace_is_set(
    builds: dict[str, Build], kubectl: str, kube_tmp: Path, tmp_path: Path
) -> None:
    """KubeRay's kustomize install labels the pod differently (name `kuberay`) and lands in
    `default`: the shared component label admits it, once the one namespace setting says so."""
    namespace, labels = kustomize_install()
    assert not admits_operator(builds["overlays/prod"], namespace, labels), "the default setting is the Helm namespace"
    tree = tmp_path / "kuberay"
    shutil.copytree(KUBERAY, tree)
    kustomization = tree / "base" / "kustomization.yaml"
    document: dict[str, Any] = yaml.safe_load(kustomization.read_text())
    (generator,) = [g for g in document["configMapGenerator"] if g["name"] == "kuberay-operator"]
    generator["literals"] = [f"namespace={namespace}" if item.startswith("namespace=") else item for item in generator["literals"]]
    kustomization.write_text(yaml.safe_dump(document, sort_keys=False))
    built = Build("prod", load_all(run_kubectl(kubectl, "kustomize", str(tree / "overlays" / "prod"), tmp=kube_tmp)))
    assert admits_operator(built, namespace, labels)
    assert not admits_operator(built, namespace, {"app.kubernetes.io/name": "kuberay"}), "any pod of the namespace"
