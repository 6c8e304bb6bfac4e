"""The served registry every in-process test starts from."""

from __future__ import annotations

from pathlib import Path

import pytest

from nonstop.registry import Registry
from tests.conftest import train_into


@pytest.fixture
def served(registry: Registry, demo_data: Path) -> Registry:
    train_into(registry, demo_data)
    return registry
