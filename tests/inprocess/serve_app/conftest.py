"""The served registry every in-process test starts from."""

from __future__ import annotations

import pytest

from nonstop.registry import Registry


@pytest.fixture
def served(trained: Registry) -> Registry:
    return trained
