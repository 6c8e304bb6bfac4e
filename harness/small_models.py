"""Small published models, for the tests and benchmarks of many models per application: each a
classifier on three features, trained in well under a second."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from nonstop.registry import Registry
from training.publish import publish_model

ROW = [0.5, -0.2, 1.0]  # one instance for any of them


def publish_small(registry: Registry, model: str, seed: int = 0, promote: bool = True) -> int:
    """A small classifier (its label from feature `seed % 3`), published and, unless told
    otherwise, promoted to production."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(60, 3))
    frame = pd.DataFrame(matrix, columns=["a", "b", "c"])
    frame["y"] = (matrix[:, seed % 3] > 0).astype(int)
    version = publish_model(LogisticRegression(), frame, model=model, label="y", registry=registry).manifest.version
    if promote:
        registry.promote(model, version, actor="test")
    return version
