"""Fixtures shared by every tier: real demo data, a real registry on disk, the tier markers.

The tiers are folders, each named for what its tests need (pyproject.toml declares the
markers): `unit` (Python and real files), `inprocess` (the app's HTTP or gRPC served in
this process), `tools` (an external tool: kubectl, atheris, a wheel build, the moto S3
server, schemathesis), `integration` (a real local Ray cluster and Serve).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from nonstop.registry import Registry
from training import demo
from training.job import TrainOptions, TrainResult, train

MODEL = "breast_cancer"
TIERS = ("unit", "inprocess", "tools", "integration")
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with the tier of the folder it lives in."""
    for item in items:
        parts = item.path.resolve().relative_to(_TESTS).parts
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(parts[0])


# Integration modules that start Ray clusters of their own beside the tier's and never use
# its app: a unit apart, which the worker done with the other tiers takes while the tier's
# cluster is still busy on the other
SIDE_CLUSTERS = ("tests/integration/test_switchover.py", "tests/integration/test_pod_deletion.py")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Across processes (`make test`: pytest-xdist), units of work are: the integration
    tier on its Ray cluster; the integration modules that run clusters of their own
    (`SIDE_CLUSTERS`); the tools tier; and every other module, one unit each. A module's
    fixtures (a fuzzing run, a served app, a moto server) are set up once, and the largest
    units go first, so the two long ones start at once on two workers and the modules fill
    in, the side clusters' two tests last."""
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(SIDE_CLUSTERS):
                return "integration-side"
            for tier in ("integration", "tools"):
                if nodeid.startswith(f"tests/{tier}/"):
                    return tier
            return super()._split_scope(nodeid)

    return TierScheduling(config, log)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    demo.write_days(folder, 3)
    return folder


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(str(tmp_path / "registry"))


@pytest.fixture(scope="session")
def trained_once(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> Path:
    """The demo model trained on the demo data and promoted (v1), once for the session.
    Never written to: tests get a copy (`trained`)."""
    root = tmp_path_factory.mktemp("trained") / "registry"
    train_into(Registry(str(root)), demo_data)
    return root


@pytest.fixture
def trained(trained_once: Path, registry: Registry) -> Registry:
    """The `registry` fixture holding this test's own copy of `trained_once`: what
    `train_into(registry, demo_data)` would leave there, without training again."""
    return copy_into(registry, trained_once)


def copy_into(registry: Registry, prepared: Path) -> Registry:
    """`registry` (on disk, empty) holding a copy of a registry folder prepared once for
    many tests, so each test writes to its own."""
    shutil.copytree(prepared, registry.uri, dirs_exist_ok=True)
    return registry


def train_into(registry: Registry, data: Path | str, *, promote: bool = True, model: str = MODEL) -> TrainResult:
    return train(TrainOptions(data=str(data), model=model, promote=promote), registry)
