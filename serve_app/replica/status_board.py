"""A small detached actor where every replica posts its `ReplicaStatus`.

HTTP requests land on whichever replica the router picks, so "which version does each
replica serve" cannot be asked over HTTP; replicas report here and `nonstop status`
reads one consistent snapshot.
"""

from __future__ import annotations

from typing import Any

import ray
from ray._common.constants import HEAD_NODE_RESOURCE_NAME

from pydantic import BaseModel, ConfigDict

from nonstop.registry import AliasRecord
from serve_app.replica.state import ReplicaStatus

BOARD_NAME = "nonstop-status-board"
BOARD_NAMESPACE = "nonstop"


@ray.remote(num_cpus=0)
class StatusBoard:
    def __init__(self) -> None:
        self._replicas: dict[str, ReplicaStatus] = {}

    def report(self, status: ReplicaStatus) -> None:
        self._replicas[status.replica_id] = status

    def snapshot(self) -> dict[str, ReplicaStatus]:
        return dict(self._replicas)


def board() -> Any:
    """The board, created by the first replica that asks. It lives on the head node, as
    Serve's controller does: a worker node comes and goes with the autoscaler or a spot
    reclaim, and the board would go with it (tests/integration/test_scaling.py kills one)."""
    return StatusBoard.options(
        name=BOARD_NAME, namespace=BOARD_NAMESPACE, lifetime="detached", get_if_exists=True,
        resources={HEAD_NODE_RESOURCE_NAME: 0.001},
    ).remote()


def read_board() -> dict[str, ReplicaStatus]:
    """From a driver connected to the cluster; empty if no replica ever reported."""
    try:
        actor = ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE)
    except ValueError:
        return {}
    return ray.get(actor.snapshot.remote(), timeout=30)


class ReplicaLine(BaseModel):
    """A replica as Serve sees it (`state`) and as it reports itself (`status`)."""

    model_config = ConfigDict(extra="forbid")

    replica_id: str
    state: str
    status: ReplicaStatus | None


class StatusReport(BaseModel):
    """What `nonstop status` prints: Serve's view of the app joined with the board's."""

    model_config = ConfigDict(extra="forbid")

    status: str
    replicas: list[ReplicaLine]
    aliases: dict[str, dict[str, AliasRecord]] = {}
    blocked: dict[str, str] = {}  # model -> why its rollouts are blocked (a ledger that does not verify)


def status_report(details: dict[str, Any], board: dict[str, ReplicaStatus]) -> StatusReport:
    """`details` is Serve's application details (the dashboard's REST answer)."""
    application = details.get("applications", {}).get("nonstop", {})
    replicas = [
        ReplicaLine(replica_id=replica["replica_id"], state=replica["state"], status=board.get(replica["replica_id"]))
        for deployment in application.get("deployments", {}).values()
        for replica in deployment.get("replicas", [])
    ]
    return StatusReport(status=application.get("status", "NOT_DEPLOYED"), replicas=replicas)
