"""Validate Ray objects against the KubeRay CRDs' OpenAPI schemas, offline.

The API server prunes fields a structural schema does not declare, silently; a
misspelled field would then just vanish. Here such a field is an error, as with
`kubectl apply --validate=strict`. CEL rules (x-kubernetes-validations) cannot be
evaluated offline: rules that compare with the old object only matter on update, and
any other rule fails the validation rather than passing unchecked.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.tools.kuberay.manifests import REPO_ROOT

CRDS_ENV = "NONSTOP_KUBERAY_CRDS"
DEFAULT_CRDS = REPO_ROOT.parent / "shared" / "kuberay-crds" / "v1.7.0"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


def crds_dir() -> Path:
    folder = Path(os.environ.get(CRDS_ENV) or DEFAULT_CRDS)
    if not all((folder / name).is_file() for name in CRD_FILES.values()):
        pytest.skip(
            f"KubeRay CRDs not found in {folder} (expected {', '.join(CRD_FILES.values())}); "
            f"set {CRDS_ENV} to the folder of the KubeRay v1.7.0 CRDs"
        )
    return folder


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the API server enforces it, with undeclared fields made errors."""
    node = copy.copy(schema)
    if node.get("nullable") and "type" in node:
        node["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node:
        node["properties"] = {k: strict(v) for k, v in node["properties"].items()}
        open_object = node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node
        if not open_object:
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = strict(node["items"])
    return node


def _cel_rules(validator: Any, rules: list[dict[str, str]], instance: Any, schema: Any) -> Iterator[Any]:
    for rule in rules:
        if "oldSelf" not in rule["rule"]:
            yield jsonschema.ValidationError(f"CEL rule cannot be checked offline: {rule['rule']!r}")


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-validations": _cel_rules}
)


class CrdSchemas:
    """The v1 schema of each KubeRay kind, loaded once per test session."""

    def __init__(self, folder: Path) -> None:
        self._validators: dict[str, Any] = {}
        for kind, name in CRD_FILES.items():
            with open(folder / name) as handle:
                crd = yaml.load(handle, Loader=yaml.CSafeLoader)
            assert crd["spec"]["names"]["kind"] == kind, f"{name} defines {crd['spec']['names']['kind']}"
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            self._validators[kind] = CrdValidator(strict(version["schema"]["openAPIV3Schema"]))

    def errors(self, obj: dict[str, Any]) -> list[str]:
        assert obj["apiVersion"] == "ray.io/v1", f"{obj['kind']} uses {obj['apiVersion']}, not ray.io/v1"
        validator = self._validators[obj["kind"]]
        return [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ]
