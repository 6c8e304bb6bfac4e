"""Every change docs/kubernetes.md describes, made to a copy of kuberay/, built with
kubectl, and judged by KubeRay 1.7's own rules (tests/tools/kuberay/decisions.py).

The table in the docs ("What a change does") is the expectation: each row names a change
by id and the rollout KubeRay performs. A change the docs call in place (no new cluster)
fails here if KubeRay would in fact start a new RayCluster, and the other way round.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from nonstop_ops import kube
from nonstop_ops.cluster.serve_config import load_serve_config
from tests.tools.kuberay.decisions import KUBERAY_VERSION, NOT_OMITEMPTY, Decision, Operator, Rollout, decide
from tests.tools.kuberay.manifests import KUBERAY, REPO_ROOT, load_all, run_kubectl

DOCS = REPO_ROOT / "docs" / "kubernetes.md"
SOURCE_ENV = "NONSTOP_KUBERAY_SRC"
TABLE_START, TABLE_END = "<!-- rollout-table -->", "<!-- /rollout-table -->"
ROLLOUT_WORDS = {
    "serve in place": Rollout.SERVE_IN_PLACE,
    "new cluster": Rollout.NEW_CLUSTER,
    "cluster in place": Rollout.CLUSTER_IN_PLACE,
    "nothing": Rollout.NOTHING,
    "incremental": Rollout.INCREMENTAL,
    "ignored": Rollout.IGNORED,
}
# What a row's downtime cell must say when the rollout replaces the running cluster's spec.
RESET_WORDS = "resets autoscaled worker counts"


class Tree:
    """A scratch copy of kuberay/ to change and build."""

    def __init__(self, root: Path, kubectl: str, tmp: Path) -> None:
        self.root, self._kubectl, self._tmp = root, kubectl, tmp
        shutil.copytree(KUBERAY, root)

    def build_service(self, overlay: str) -> dict[str, Any]:
        objects = load_all(run_kubectl(self._kubectl, "kustomize", str(self.root / overlay), tmp=self._tmp))
        (service,) = [o for o in objects if o["kind"] == "RayService"]
        return service

    def edit_yaml(self, relative: str, change: Callable[[Any], None]) -> None:
        path = self.root / relative
        documents = list(yaml.safe_load_all(path.read_text()))
        for document in documents:
            change(document)
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))

    def serve_config(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Edit serve_config.yaml as an operator would, then render it (python -m nonstop_ops.kube)."""
        config = load_serve_config()
        change(config)
        source = self.root.parent / "serve_config.yaml"
        source.write_text(yaml.safe_dump(config, sort_keys=False))
        assert kube.main(["--kuberay-dir", str(self.root), "--config", str(source)]) == 0


def model_server(config: dict[str, Any]) -> dict[str, Any]:
    (application,) = config["applications"]
    (deployment,) = [d for d in application["deployments"] if d["name"] == "ModelServer"]
    return deployment


def pin_version(tree: Tree) -> None:
    def change(config: dict[str, Any]) -> None:
        user_config = model_server(config)["user_config"]
        user_config.pop("alias", None)
        user_config["version"] = 3

    tree.serve_config(change)


def follow_alias(tree: Tree) -> None:
    tree.serve_config(lambda c: model_server(c)["user_config"].update(alias="staging"))


def serve_replicas(tree: Tree) -> None:
    tree.serve_config(lambda c: model_server(c)["autoscaling_config"].update(max_replicas=8))


def new_image(tree: Tree) -> None:
    def change(kustomization: dict[str, Any]) -> None:
        kustomization["images"][0]["newTag"] = "0.2.0-ray2.60.0"

    tree.edit_yaml("overlays/prod/kustomization.yaml", change)


def _base_config_literal(name: str, value: str) -> Callable[[Tree], None]:
    def make(tree: Tree) -> None:
        def change(kustomization: dict[str, Any]) -> None:
            (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "nonstop-config"]
            literals = [item for item in generator["literals"] if not item.startswith(f"{name}=")]
            generator["literals"] = [*literals, f"{name}={value}"]

        tree.edit_yaml("base/kustomization.yaml", change)

    return make


def _worker_group(service_patch: Callable[[dict[str, Any]], None]) -> Callable[[Tree], None]:
    """Edit the first worker group of the base RayService."""

    def make(tree: Tree) -> None:
        def change(service: dict[str, Any]) -> None:
            service_patch(service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0])

        tree.edit_yaml("base/rayservice.yaml", change)

    return make


def max_replicas(tree: Tree) -> None:
    def change(patches: list[dict[str, Any]]) -> None:
        (op,) = [p for p in patches if p["path"].endswith("/maxReplicas")]
        op["value"] = op["value"] + 4

    tree.edit_yaml("overlays/prod/rayservice-autoscaling.yaml", change)


def worker_resources(group: dict[str, Any]) -> None:
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "4Gi"
    group["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "4Gi"


def tolerations(group: dict[str, Any]) -> None:
    group["template"]["spec"]["tolerations"] = [{"key": "dedicated", "operator": "Equal", "value": "serve"}]


def add_worker_group(tree: Tree) -> None:
    def change(service: dict[str, Any]) -> None:
        groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        extra = yaml.safe_load(yaml.safe_dump(groups[0]))
        extra["groupName"] = "serve-extra"
        groups.append(extra)

    tree.edit_yaml("base/rayservice.yaml", change)


def nothing(tree: Tree) -> None:
    """A model update: the registry alias moves; nothing is applied to Kubernetes."""


def drop_start_params(group: dict[str, Any]) -> None:
    """`rayStartParams: {}` removed: no omitempty on it in v1.7.0, so Go hashes null, not {}."""
    del group["rayStartParams"]


def incremental_upgrade(tree: Tree) -> None:
    """A new image with the incremental strategy (Gateway options as the CRD asks)."""

    def change(service: dict[str, Any]) -> None:
        service["spec"]["upgradeStrategy"] = {
            "type": "NewClusterWithIncrementalUpgrade",
            "clusterUpgradeOptions": {"gatewayClassName": "istio", "stepSizePercent": 25, "intervalSeconds": 30},
        }

    tree.edit_yaml("base/rayservice.yaml", change)
    new_image(tree)


# The operator as it runs for a change, where not the default KubeRay v1.7.0 with its
# feature gates, and the KubeRay version that built the running RayCluster.
OPERATORS: dict[str, tuple[Operator, str]] = {
    "operator-no-zero-downtime": (Operator(enable_zero_downtime="false"), KUBERAY_VERSION),
    "operator-upgrade": (Operator(), "v1.6.1"),
}


CHANGES: dict[str, Callable[[Tree], None]] = {
    "alias-move": nothing,
    "pin-version": pin_version,
    "follow-alias": follow_alias,
    "serve-replicas": serve_replicas,
    "new-image": new_image,
    "registry-uri": _base_config_literal("NONSTOP_REGISTRY", "s3://other-bucket/registry"),
    "rotate-secrets": _base_config_literal("NONSTOP_SECRETS_REVISION", "2"),
    "worker-resources": _worker_group(worker_resources),
    "max-replicas": max_replicas,
    "tolerations": _worker_group(tolerations),
    "add-worker-group": add_worker_group,
    "empty-start-params": _worker_group(drop_start_params),
    "incremental-upgrade": incremental_upgrade,
    "operator-no-zero-downtime": new_image,
    "operator-upgrade": nothing,
}


def documented_rows() -> dict[str, tuple[frozenset[Rollout], str]]:
    """`id` → (rollouts, downtime cell), from the table between the markers in docs/kubernetes.md."""
    text = DOCS.read_text()
    assert TABLE_START in text and TABLE_END in text, f"{DOCS} has no rollout table"
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    rows: dict[str, tuple[frozenset[Rollout], str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        ids = re.findall(r"`([a-z-]+)`", cells[0]) if len(cells) >= 3 else []  # the last is the id
        if not ids:
            continue
        words = [w.strip().lower() for w in cells[1].split("+")]
        assert all(w in ROLLOUT_WORDS for w in words), f"unknown rollout {cells[1]!r} for {ids[-1]}"
        rows[ids[-1]] = (frozenset(ROLLOUT_WORDS[w] for w in words), cells[2])
    return rows


def documented_rollouts() -> dict[str, frozenset[Rollout]]:
    return {change: rollouts for change, (rollouts, _) in documented_rows().items()}


@pytest.fixture(scope="module")
def before(kubectl: str, kube_tmp: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return Tree(tmp_path_factory.mktemp("unchanged") / "kuberay", kubectl, kube_tmp).build_service("overlays/prod")


def rollout_of(change: str, before: dict[str, Any], kubectl: str, kube_tmp: Path, root: Path) -> Decision:
    tree = Tree(root / "kuberay", kubectl, kube_tmp)
    CHANGES[change](tree)
    operator, built_by = OPERATORS.get(change, (Operator(), KUBERAY_VERSION))
    return decide(before, tree.build_service("overlays/prod"), operator, built_by)


def test_the_docs_table_covers_every_change_tested_here() -> None:
    assert set(documented_rollouts()) == set(CHANGES)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_kuberay_rolls_out_each_change_as_the_docs_say(
    change: str, before: dict[str, Any], kubectl: str, kube_tmp: Path, tmp_path: Path
) -> None:
    expected = documented_rollouts()[change]
    decision = rollout_of(change, before, kubectl, kube_tmp, tmp_path)
    assert decision.rollouts == expected, f"{change}: KubeRay 1.7 would do {decision.rollouts}, the docs say {expected}"
    downtime = documented_rows()[change][1]
    assert decision.resets_worker_counts == (RESET_WORDS in downtime), (
        f"{change}: the docs' downtime cell must say {RESET_WORDS!r} exactly when the running cluster's "
        "spec is replaced (modifyRayCluster)"
    )


def test_a_wrong_expectation_fails(before: dict[str, Any], kubectl: str, kube_tmp: Path, tmp_path: Path) -> None:
    """The check can fail: an image change documented as an in-place Serve update."""
    decision = rollout_of("new-image", before, kubectl, kube_tmp, tmp_path)
    with pytest.raises(AssertionError):
        assert decision.rollouts == frozenset({Rollout.SERVE_IN_PLACE})
    assert decision.starts_a_new_cluster


def test_ignored_fields_match_the_go_source() -> None:
    """The ported list of unhashed fields is the one in utils/util.go (where the source is here)."""
    folder = Path(os.environ.get(SOURCE_ENV) or REPO_ROOT.parent / "shared" / "kuberay-src" / "v1.7.0")
    source = folder / "ray-operator" / "controllers" / "ray" / "utils" / "util.go"
    if not source.is_file():
        pytest.skip(f"KubeRay source not found at {source}: set {SOURCE_ENV} to the v1.7.0 source folder")
    body = source.read_text().split("func GenerateHashWithoutReplicasAndWorkersToDelete", 1)[1].split("\n}\n", 1)[0]
    cleared = set(re.findall(r"updatedRayClusterSpec\.([\w.\[\]]+) = nil", body))
    assert cleared == {
        "HeadGroupSpec.Template.Spec.Tolerations",
        "HeadGroupSpec.Template.Spec.SchedulingGates",
        "WorkerGroupSpecs[i].Replicas",
        "WorkerGroupSpecs[i].MaxReplicas",
        "WorkerGroupSpecs[i].MinReplicas",
        "WorkerGroupSpecs[i].ScaleStrategy.WorkersToDelete",
        "WorkerGroupSpecs[i].Template.Spec.Tolerations",
        "WorkerGroupSpecs[i].Template.Spec.SchedulingGates",
        "UpgradeStrategy",
    }, "KubeRay's hash ignores other fields now: update tests/tools/kuberay/decisions.py"


def _kuberay_source(relative: str) -> Path:
    folder = Path(os.environ.get(SOURCE_ENV) or REPO_ROOT.parent / "shared" / "kuberay-src" / "v1.7.0")
    source = folder / "ray-operator" / relative
    if not source.is_file():
        pytest.skip(f"KubeRay source not found at {source}: set {SOURCE_ENV} to the v1.7.0 source folder")
    return source


def _changed(service: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    after = copy.deepcopy(service)
    change(after["spec"])
    return after


def _image(spec: dict[str, Any]) -> None:
    spec["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = "other:1"


def test_an_empty_and_an_absent_ray_start_params_hash_apart(before: dict[str, Any]) -> None:
    """`rayStartParams` has no omitempty: `{}` and absent are two hashes (a new cluster);
    an omitempty map (`labels`) stays equal either way."""
    group = before["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["rayStartParams"] == {}
    dropped = _changed(before, lambda s: s["rayClusterConfig"]["workerGroupSpecs"][0].pop("rayStartParams"))
    assert decide(before, dropped).rollouts == frozenset({Rollout.NEW_CLUSTER})
    assert decide(dropped, dropped).rollouts == frozenset({Rollout.NOTHING})
    labelled = _changed(before, lambda s: s["rayClusterConfig"]["workerGroupSpecs"][0].update(labels={}))
    assert decide(before, labelled).rollouts == frozenset({Rollout.NOTHING})


def test_the_incremental_strategy_follows_its_feature_gate(before: dict[str, Any]) -> None:
    """NewClusterWithIncrementalUpgrade is a stepped switch with the gate on (v1.7's default);
    with the gate off the operator refuses to start a second cluster at all."""
    strategy = {"type": "NewClusterWithIncrementalUpgrade"}
    incremental = _changed(before, lambda s: s.update(upgradeStrategy=strategy))
    upgraded = _changed(incremental, _image)
    assert decide(incremental, upgraded).rollouts == frozenset({Rollout.INCREMENTAL})
    gate_off = Operator(incremental_upgrade_gate=False)
    assert decide(incremental, upgraded, gate_off).rollouts == frozenset({Rollout.IGNORED})
    assert decide(before, _changed(before, _image), gate_off).rollouts == frozenset({Rollout.NEW_CLUSTER})


def test_the_feature_gate_default_is_the_go_sources() -> None:
    text = _kuberay_source("pkg/features/features.go").read_text()
    (default,) = re.findall(r"RayServiceIncrementalUpgrade:\s*\{Default: (true|false)", text)
    assert Operator().incremental_upgrade_gate == (default == "true")


def test_enable_zero_downtime_false_ignores_a_cluster_change_only_without_a_strategy(before: dict[str, Any]) -> None:
    """The operator's ENABLE_ZERO_DOWNTIME=false applies only where the spec names no strategy:
    the cluster change is dropped, a Serve change still lands in place. Ours names NewCluster."""
    off = Operator(enable_zero_downtime="False")
    assert decide(before, _changed(before, _image), off).rollouts == frozenset({Rollout.NEW_CLUSTER})
    unnamed = _changed(before, lambda s: s.pop("upgradeStrategy"))

    def image_and_serve(spec: dict[str, Any]) -> None:
        _image(spec)
        spec["serveConfigV2"] += "\n"

    decision = decide(unnamed, _changed(unnamed, image_and_serve), off)
    assert decision.rollouts == frozenset({Rollout.IGNORED, Rollout.SERVE_IN_PLACE})
    assert decide(unnamed, _changed(unnamed, _image)).rollouts == frozenset({Rollout.NEW_CLUSTER})


def test_an_operator_upgrade_writes_a_pending_spec_change_over_the_running_cluster(before: dict[str, Any]) -> None:
    """A cluster built by another KubeRay version is rebuilt in place from the RayService
    (shouldUpdateCluster), hash or not: an image change applied with the operator upgrade
    never becomes a new cluster, and the autoscaled worker counts go back to the manifest's."""
    decision = decide(before, _changed(before, _image), Operator(), built_by="v1.6.1")
    assert decision.rollouts == frozenset({Rollout.CLUSTER_IN_PLACE, Rollout.SERVE_IN_PLACE})
    assert decision.resets_worker_counts and not decision.starts_a_new_cluster


def test_the_fields_hashed_without_omitempty_are_the_go_sources() -> None:
    """NOT_OMITEMPTY is every json tag without omitempty in raycluster_types.go, less the
    required fields and those the hash clears."""
    text = _kuberay_source("apis/ray/v1/raycluster_types.go").read_text()
    tags = set(re.findall(r'^\s+\w+\s+\S+\s+`json:"(\w+)"`', text, flags=re.MULTILINE))
    required_or_cleared = {"headGroupSpec", "groupName", "template", "minReplicas", "maxReplicas", "items"}
    assert tags - required_or_cleared == NOT_OMITEMPTY
