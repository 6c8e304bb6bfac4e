"""One real local Ray cluster and Serve app for the whole integration tier.

Ports differ from `nonstop up`'s defaults so a developer's running stack is not hit by
the tests' traffic. NONSTOP_TEST_PORT_BASE moves the whole cluster (ports, Ray temp and
haproxy folders), so two checkouts can run the tier side by side; stopping a cluster ends
only its own processes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from nonstop_ops.cluster import lifecycle as local
from nonstop_ops.cluster.serve_config import deployment_config, load_serve_config
from nonstop.config import Settings
from nonstop.registry import Registry
from harness.rollout import Stack, wait_until
from tests.conftest import MODEL

# LightGBM is off the format's trust list (its boosters cannot be checked inside): the
# suite's cluster trusts it as an operator would, by exact name in NONSTOP_TRUSTED_TYPES,
# for the LightGBM example (tests/integration/test_examples.py)
LIGHTGBM_TYPES = ("lightgbm.basic.Booster", "lightgbm.sklearn.LGBMClassifier")
PORT_BASE = int(os.environ.get("NONSTOP_TEST_PORT_BASE", "21000"))
# A stopping replica drains for this long instead of Serve's default: the suite stops
# replicas on every code update and scale-down, and its HAProxy lets go within an update
DRAIN_S = 5.0
# One logical CPU more than the app's two replicas take: a code update's new replica starts
# while the one it replaces drains, as on a node with room for one pod more, instead of
# waiting for that replica's CPU (Serve stops the old and starts the new at once)
HEAD_CPUS = 3
# Every Ray process exports its metrics this often instead of Ray's 10 s: the tests that read
# the Prometheus endpoint wait for an export or two
METRICS_REPORT_MS = 2000
TEST_CLUSTER = local.LocalCluster.isolated(
    PORT_BASE, f"nst-{PORT_BASE}", ingress_drain_s=DRAIN_S, num_cpus=HEAD_CPUS, metrics_report_interval_ms=METRICS_REPORT_MS
)
POLL_INTERVAL_S = 0.5
# Requests per second each background load of the tier offers (open loop, its clients'
# count at most in flight): hundreds of requests span every swap, restart and kill, and the
# clients and replicas leave the cores to what the test waits for (the Python client
# costs as much CPU per request as the server). Closed-loop load at saturation is the
# benchmarks' (benchmarks/rollout.py).
LOAD_RATE = 100.0
# What each canary load offers, open loop alike: at a first step of 10 % a 4 s window gets
# three times the candidate requests the tests' policies ask for (min_requests 20)
CANARY_RATE = 150.0
# A replica killed with SIGKILL fails a burst of requests at the kill (harness.loadgen.failed_beyond):
# a second bounds that burst generously and is far shorter than a replacement's start, so
# requests lost while the survivor should carry the load fail the tests
KILL_BURST_S = 1.0
SLACK_S = 30.0  # a busy 2-core machine: scheduling, Ray's own work, the load driver
BODY_TIMEOUT_S = 10.0  # tests/integration/test_hostile_input.py waits it out; on a loaded
# 2-core machine a replica mid-swap can stall a few seconds, which a shorter bound turned into 408s


def swap_bound(served: Stack) -> float:
    """Poll interval, then every replica's load, side by side (each within its CPU share)."""
    load = max(served.metadata()["load_seconds"] for _ in range(4))
    return POLL_INTERVAL_S + load + SLACK_S


def promote_between_answers(served: Stack, answers: list[Any], new: int) -> None:
    """While a client appends to `answers`: 20 answers, the promotion of `new` and every
    replica on it, then 20 answers more, so the load spans the whole swap."""
    wait_until(lambda: len(answers) >= 20, 60, "answers before the swap")
    served.registry.promote(MODEL, new)
    wait_until(lambda: served.serving_everywhere(new), swap_bound(served), f"every replica serving v{new}")
    seen = len(answers)
    wait_until(lambda: len(answers) >= seen + 20, 60, "answers after the swap")


@pytest.fixture(scope="session")
def side_slots() -> tuple[local.LocalCluster, local.LocalCluster]:
    """Two clusters a test may start beside the tier's, as two pods of one Service: next
    to it, at base+1000 and base+1010 (the modules that take them run one after the other,
    a unit of their own: `SIDE_CLUSTERS` in tests/conftest.py)."""
    first, second = (local.LocalCluster.isolated(PORT_BASE + i, f"nst-{PORT_BASE + i}") for i in (1000, 1010))
    return first, second


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory, trained_once: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("serving") / "registry"
    shutil.copytree(trained_once, root)
    registry = Registry(str(root))
    config = load_serve_config()
    deployment_config(config)["user_config"]["poll_interval_s"] = POLL_INTERVAL_S
    config["applications"][0]["args"] = {"limits": {"body_timeout_s": BODY_TIMEOUT_S}}
    local.stop(TEST_CLUSTER)  # a previous run's leftovers, haproxy included
    local.start(TEST_CLUSTER, Settings(registry=registry.uri, trusted_types=LIGHTGBM_TYPES))
    try:
        local.deploy(TEST_CLUSTER, config)
        local.wait_ready(TEST_CLUSTER, MODEL)
        ray.init(address=TEST_CLUSTER.address, logging_level="ERROR", log_to_driver=False)
        yield Stack(TEST_CLUSTER, registry, config, MODEL)
    finally:
        ray.shutdown()
        local.stop(TEST_CLUSTER)
        leftovers = local.cluster_pids(TEST_CLUSTER)
        if leftovers:  # every process the tier started ends with it, Ray's client server included
            raise RuntimeError(f"processes {leftovers} outlived the test cluster")


@pytest.fixture(autouse=True)
def settled_stack(request: pytest.FixtureRequest) -> None:
    """A test on the shared stack starts once a previous test's last deploy (a code
    update, a change of model, replicas restarted on purpose) is wholly applied."""
    if "served" in request.fixturenames:
        stack: Stack = request.getfixturevalue("served")
        wait_until(stack.settled, 180, "the app RUNNING with all its replicas")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c
