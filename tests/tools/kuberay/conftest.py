"""Session fixtures: kubectl, the KubeRay CRD schemas, and every kustomization built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools.kuberay.manifests import KUBERAY, Build, find_kubectl, kustomizations, load_all, run_kubectl
from tests.tools.kuberay.schemas import CrdSchemas, crds_dir


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_kubectl()


@pytest.fixture(scope="session")
def kube_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kube")


@pytest.fixture(scope="session")
def builds(kubectl: str, kube_tmp: Path) -> dict[str, Build]:
    """kubectl kustomize of every kustomization, keyed by its path under kuberay/."""
    result = {}
    for folder in kustomizations():
        name = str(folder.relative_to(KUBERAY))
        result[name] = Build(name, load_all(run_kubectl(kubectl, "kustomize", str(folder), tmp=kube_tmp)))
    return result


@pytest.fixture(scope="session")
def crds() -> CrdSchemas:
    return CrdSchemas(crds_dir())
