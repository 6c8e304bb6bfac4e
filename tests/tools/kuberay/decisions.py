"""What KubeRay v1.7.0 does when a RayService changes, ported from its Go source.

Only the rules that decide the kind of rollout, so that a test can say, from two rendered
manifests and without a cluster, whether applying the second over the first updates Serve
in place, updates the running RayCluster, starts a new RayCluster (NewCluster, or
NewClusterWithIncrementalUpgrade), or does nothing at all. Source:
`ray-operator/controllers/ray/` at tag v1.7.0 (kept in `../shared/kuberay-src/v1.7.0/`; the
functions are named next to each port below). What the manifest does not show, the
operator's own settings (its version, the `RayServiceIncrementalUpgrade` feature gate,
its `ENABLE_ZERO_DOWNTIME` environment variable), comes in as an `Operator`.

Where the port differs from the Go code, it errs on the side of predicting a new cluster:

- KubeRay hashes the *typed* Go struct (`json.Marshal` of `RayClusterSpec`), this module
  hashes canonical JSON of the manifest. Go's typed form canonicalises some spellings
  (the quantity "1000m" is "1"; an absent list and an empty one are the same where the
  field is `omitempty`); here "absent" and "empty" are made equal (`_prune`) except for
  the fields Go marshals without `omitempty` (`NOT_OMITEMPTY`: `rayStartParams`, where
  an absent map hashes as `null` and `{}` as `{}`, so the two differ), and two spellings
  of one quantity count as a change. A spelling-only edit may be predicted as NewCluster
  where KubeRay does nothing; a real change is never missed.
- Status-driven branches (an upgrade already pending, the traffic steps of an incremental
  upgrade, its rollbacks, suspend, a head pod that crashed without GCS fault tolerance) are
  left out: the question here is what one `kubectl apply` over a healthy, settled
  RayService does, or what an operator upgrade does to it.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]

# The release this port follows: utils.KUBERAY_VERSION, written on every RayCluster the
# operator builds (annotation ray.io/kuberay-version).
KUBERAY_VERSION = "v1.7.0"
INCREMENTAL = "NewClusterWithIncrementalUpgrade"
# Fields of RayClusterSpec (and its group specs) whose JSON tag has no `omitempty`
# (apis/ray/v1/raycluster_types.go), by name; of those the hash keeps, only rayStartParams
# may be absent (groupName and template are required; min/maxReplicas are cleared).
NOT_OMITEMPTY = frozenset({"rayStartParams"})


@dataclass(frozen=True)
class Operator:
    """The running operator's settings, which no manifest shows.

    `incremental_upgrade_gate` is the feature gate RayServiceIncrementalUpgrade
    (pkg/features/features.go: Beta, on by default in v1.7); `enable_zero_downtime` the
    operator's ENABLE_ZERO_DOWNTIME environment variable (None: unset).
    """

    version: str = KUBERAY_VERSION
    incremental_upgrade_gate: bool = True
    enable_zero_downtime: str | None = None


class Rollout(enum.Enum):
    """What an apply does to the running app."""

    NOTHING = "nothing"  # neither the RayCluster nor Serve hears of the change
    SERVE_IN_PLACE = "serve config resubmitted to the running cluster"
    CLUSTER_IN_PLACE = "running RayCluster updated in place"
    NEW_CLUSTER = "new RayCluster, traffic switched when its apps are RUNNING"
    INCREMENTAL = "new RayCluster, traffic shifted to it in steps through a Gateway HTTPRoute"
    IGNORED = "cluster spec changed, but the upgrade strategy forbids a new cluster"


@dataclass(frozen=True)
class Decision:
    rollouts: frozenset[Rollout]

    @property
    def starts_a_new_cluster(self) -> bool:
        return bool({Rollout.NEW_CLUSTER, Rollout.INCREMENTAL} & self.rollouts)

    @property
    def resets_worker_counts(self) -> bool:
        """modifyRayCluster replaces the running cluster's whole spec with one built from the
        RayService (KubeRay's TODO: "This will cause issues if autoscaler is enabled"): every
        worker group's `replicas` goes back to the manifest's, dropping what the autoscaler
        had scaled to, until it scales again."""
        return Rollout.CLUSTER_IN_PLACE in self.rollouts


def _prune(value: Any) -> Any:
    """Drop None, {} and [] recursively: Go's omitempty (and nil vs empty) makes them equal.

    Fields in NOT_OMITEMPTY stay as they are: Go writes a nil map as `null`, an empty one as
    `{}` (spec_for_hashing spells an absent one as None).
    """
    if isinstance(value, dict):
        pruned = {k: v if k in NOT_OMITEMPTY else _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if k in NOT_OMITEMPTY or v not in (None, {}, [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def spec_for_hashing(cluster: Manifest) -> Manifest:
    """`rayClusterConfig` with the fields KubeRay leaves out of its hash.

    rayservice_controller.go: rayClusterSpecForHashing (clears `suspend`), then
    utils/util.go: GenerateHashWithoutReplicasAndWorkersToDelete, which clears, for the head,
    `template.spec.tolerations` and `schedulingGates`; for every worker group `replicas`,
    `minReplicas`, `maxReplicas`, `scaleStrategy.workersToDelete`, and the template's
    `tolerations` and `schedulingGates`; and the cluster's `upgradeStrategy`.
    """
    spec = copy.deepcopy(cluster)
    spec.pop("suspend", None)
    spec.pop("upgradeStrategy", None)
    head_group = spec.setdefault("headGroupSpec", {})
    head_group.setdefault("rayStartParams", None)
    head = head_group.get("template", {}).get("spec", {})
    head.pop("tolerations", None)
    head.pop("schedulingGates", None)
    for group in spec.get("workerGroupSpecs", []):
        group.setdefault("rayStartParams", None)
        for key in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(key, None)
        group.get("scaleStrategy", {}).pop("workersToDelete", None)
        template = group.get("template", {}).get("spec", {})
        template.pop("tolerations", None)
        template.pop("schedulingGates", None)
    return _prune(spec)


def cluster_hash(cluster: Manifest) -> str:
    """utils/util.go: GenerateJsonHash over spec_for_hashing (equality, not Go's bytes)."""
    text = json.dumps(spec_for_hashing(cluster), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()


def _hash_equal(goal: Manifest, running: Manifest, partial: bool) -> bool:
    """rayservice_controller.go: isClusterSpecHashEqual.

    `running` is the spec the RayCluster was built from (its hash annotation and its
    worker-group count annotation). With `partial`, only the running cluster's worker
    groups are compared: groups appended at the end update the cluster in place.
    """
    if not partial:
        return cluster_hash(goal) == cluster_hash(running)
    running_groups = len(running.get("workerGroupSpecs", []))
    goal_groups = goal.get("workerGroupSpecs", [])
    if len(goal_groups) < running_groups:
        return False  # Go compares against an empty goal hash: never equal
    trimmed = {**goal, "workerGroupSpecs": goal_groups[:running_groups]}
    return cluster_hash(trimmed) == cluster_hash(running)


def _zero_downtime(service_spec: Manifest, operator: Operator) -> bool:
    """rayservice_controller.go: isZeroDowntimeUpgradeEnabled.

    A strategy type in the spec wins; with the gate on, NewCluster and the incremental
    upgrade start a second cluster, with it off only NewCluster. No type: on, unless the
    operator runs with ENABLE_ZERO_DOWNTIME=false.
    """
    strategy = (service_spec.get("upgradeStrategy") or {}).get("type")
    if strategy is not None:
        allowed = ("NewCluster", INCREMENTAL) if operator.incremental_upgrade_gate else ("NewCluster",)
        return strategy in allowed
    return (operator.enable_zero_downtime or "").lower() != "false"


def _incremental(service_spec: Manifest, operator: Operator) -> bool:
    """utils/util.go: IsIncrementalUpgradeEnabled."""
    strategy = (service_spec.get("upgradeStrategy") or {}).get("type")
    return operator.incremental_upgrade_gate and strategy == INCREMENTAL


def decide(
    before: Manifest, after: Manifest, operator: Operator | None = None, built_by: str = KUBERAY_VERSION
) -> Decision:
    """What applying RayService `after` over a settled `before` does.

    `built_by` is the KubeRay version annotation on the running RayCluster: an operator
    upgrade leaves it behind `operator.version` (apply the same manifest to see what the
    upgrade alone does). The order of one reconcile (rayservice_controller.go: Reconcile):
    1. reconcileRayCluster → shouldUpdateCluster(active): the cluster was built by another
       KubeRay version → modifyRayCluster in place, whatever the hash says (and the
       cluster's hash annotation becomes the goal's, so step 2 sees no difference: a spec
       change applied together with an operator upgrade is written over the running
       cluster, never rolled out as a new one); hash equal → leave it; equal on the
       running worker groups (new groups appended) → modifyRayCluster in place.
    2. shouldPrepareNewCluster: hash equal, or partially equal → no; otherwise a pending
       cluster if zero-downtime upgrades are on (else the change is ignored), switched to
       at once (NewCluster) or in steps (NewClusterWithIncrementalUpgrade).
    3. reconcileServe on the pending cluster if there is one (it gets serveConfigV2 from
       scratch: nothing is cached for it), else on the active one, where
       checkIfNeedSubmitServeApplications resubmits when the cached serveConfigV2 string
       differs from the new one, byte for byte, or nothing is cached (a restarted operator).
    """
    operator = operator or Operator()
    old, new = before["spec"], after["spec"]
    running, goal = old["rayClusterConfig"], new["rayClusterConfig"]
    rollouts: set[Rollout] = set()
    if built_by != operator.version:
        # The new operator process starts with no cached serveConfigV2: it resubmits it.
        rollouts |= {Rollout.CLUSTER_IN_PLACE, Rollout.SERVE_IN_PLACE}
    elif not _hash_equal(goal, running, partial=False):
        if _hash_equal(goal, running, partial=True):
            rollouts.add(Rollout.CLUSTER_IN_PLACE)
        elif _zero_downtime(new, operator):
            rollouts.add(Rollout.INCREMENTAL if _incremental(new, operator) else Rollout.NEW_CLUSTER)
        else:
            rollouts.add(Rollout.IGNORED)
    new_cluster = bool({Rollout.NEW_CLUSTER, Rollout.INCREMENTAL} & rollouts)
    if not new_cluster and old.get("serveConfigV2") != new.get("serveConfigV2"):
        rollouts.add(Rollout.SERVE_IN_PLACE)
    return Decision(frozenset(rollouts or {Rollout.NOTHING}))
