"""A small detached actor where every replica posts what it serves.

HTTP requests land on whichever replica the router picks, so "which version does each
replica serve" cannot be asked over HTTP; replicas report here and `nonstop status`
reads one consistent snapshot.
"""

from __future__ import annotations

from typing import Any

import ray

BOARD_NAME = "nonstop-status-board"
BOARD_NAMESPACE = "nonstop"


@ray.remote(num_cpus=0)
class StatusBoard:
    def __init__(self) -> None:
        self._replicas: dict[str, dict[str, Any]] = {}

    def report(self, replica_id: str, status: dict[str, Any]) -> None:
        self._replicas[replica_id] = status

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self._replicas)


def board() -> Any:
    return StatusBoard.options(
        name=BOARD_NAME, namespace=BOARD_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()


def read_board() -> dict[str, dict[str, Any]]:
    """From a driver connected to the cluster; empty if no replica ever reported."""
    try:
        actor = ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE)
    except ValueError:
        return {}
    return ray.get(actor.snapshot.remote(), timeout=30)
