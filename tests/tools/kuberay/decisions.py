"""What KubeRay v1.7.0 does when a RayService changes, ported from its Go source.

Only the rules that decide the kind of rollout, so that a test can say, from two rendered
manifests and without a cluster, whether applying the second over the first updates Serve
in place, updates the running RayCluster, starts a new RayCluster (NewCluster), or does
nothing at all. Source: `ray-operator/controllers/ray/` at tag v1.7.0 (kept in
`../shared/kuberay-src/v1.7.0/`; the functions are named next to each port below).

Where the port differs from the Go code, it errs on the side of predicting a new cluster:

- KubeRay hashes the *typed* Go struct (`json.Marshal` of `RayClusterSpec`), this module
  hashes canonical JSON of the manifest. Go's typed form canonicalises some spellings
  (the quantity "1000m" is "1"; an absent list and an empty one are the same); here only
  "absent" and "empty" are made equal (`_prune`), so two spellings of one quantity count
  as a change. A spelling-only edit may be predicted as NewCluster where KubeRay does
  nothing; a real change is never missed.
- Status-driven branches (an upgrade already pending, incremental upgrades, rollbacks,
  suspend, a head pod that crashed without GCS fault tolerance) are left out: the question
  here is what one `kubectl apply` over a healthy, settled RayService does.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]

# The upgrade strategies that let KubeRay start a second cluster
# (rayservice_controller.go: isZeroDowntimeUpgradeEnabled; ENABLE_ZERO_DOWNTIME unset).
ZERO_DOWNTIME_TYPES = ("NewCluster", "NewClusterWithIncrementalUpgrade")


class Rollout(enum.Enum):
    """What an apply does to the running app."""

    NOTHING = "nothing"  # neither the RayCluster nor Serve hears of the change
    SERVE_IN_PLACE = "serve config resubmitted to the running cluster"
    CLUSTER_IN_PLACE = "running RayCluster updated in place"
    NEW_CLUSTER = "new RayCluster, traffic switched when its apps are RUNNING"
    IGNORED = "cluster spec changed, but the upgrade strategy forbids a new cluster"


@dataclass(frozen=True)
class Decision:
    rollouts: frozenset[Rollout]

    @property
    def starts_a_new_cluster(self) -> bool:
        return Rollout.NEW_CLUSTER in self.rollouts


def _prune(value: Any) -> Any:
    """Drop None, {} and [] recursively: Go's omitempty (and nil vs empty) makes them equal."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [])}
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
    head = spec.get("headGroupSpec", {}).get("template", {}).get("spec", {})
    head.pop("tolerations", None)
    head.pop("schedulingGates", None)
    for group in spec.get("workerGroupSpecs", []):
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


def _zero_downtime(service_spec: Manifest) -> bool:
    """rayservice_controller.go: isZeroDowntimeUpgradeEnabled (no strategy: enabled)."""
    strategy = (service_spec.get("upgradeStrategy") or {}).get("type")
    return strategy is None or strategy in ZERO_DOWNTIME_TYPES


def decide(before: Manifest, after: Manifest) -> Decision:
    """What applying RayService `after` over a settled `before` does.

    The order of one reconcile (rayservice_controller.go: Reconcile):
    1. reconcileRayCluster → shouldUpdateCluster(active): hash equal → leave it; equal on
       the running worker groups (new groups appended) → modifyRayCluster in place.
    2. shouldPrepareNewCluster: hash equal, or partially equal → no; otherwise a pending
       cluster if zero-downtime upgrades are on (else the change is ignored).
    3. reconcileServe on the pending cluster if there is one (it gets serveConfigV2 from
       scratch: nothing is cached for it), else on the active one, where
       checkIfNeedSubmitServeApplications resubmits when the cached serveConfigV2 string
       differs from the new one, byte for byte.
    """
    old, new = before["spec"], after["spec"]
    running, goal = old["rayClusterConfig"], new["rayClusterConfig"]
    rollouts: set[Rollout] = set()
    if not _hash_equal(goal, running, partial=False):
        if _hash_equal(goal, running, partial=True):
            rollouts.add(Rollout.CLUSTER_IN_PLACE)
        elif _zero_downtime(new):
            rollouts.add(Rollout.NEW_CLUSTER)
        else:
            rollouts.add(Rollout.IGNORED)
    if Rollout.NEW_CLUSTER not in rollouts and old.get("serveConfigV2") != new.get("serveConfigV2"):
        rollouts.add(Rollout.SERVE_IN_PLACE)
    return Decision(frozenset(rollouts or {Rollout.NOTHING}))
