"""Fixtures shared by every tier: real demo data, a real registry on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from nonstop.registry import Registry
from training import demo
from training.job import TrainOptions, TrainResult, train

MODEL = "breast_cancer"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    demo.write_days(folder, 3)
    return folder


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(str(tmp_path / "registry"))


def train_into(registry: Registry, data: Path | str, *, promote: bool = True, model: str = MODEL) -> TrainResult:
    return train(TrainOptions(data=str(data), model=model, promote=promote), registry)
