"""Breast-cancer diagnosis with a custom Pipeline: a ColumnTransformer by column name.

Numbers are imputed and scaled, the categorical `size_band` is one-hot encoded, a
logistic regression decides. `build` is also a factory for `nonstop train --pipeline
examples/column_transformer.py:build`, on data that has these columns (not the demo
data, whose columns are named differently):

    python examples/column_transformer.py --registry registry
    ray job submit --working-dir . -- python examples/column_transformer.py
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from training.publish import Gate, publish_model

LABEL = "diagnosis"
NUMBERS = ["mean radius", "mean texture", "mean smoothness", "mean concavity", "worst radius", "worst texture",
           "worst smoothness", "worst concavity", "worst symmetry"]  # fmt: skip


def load_data() -> pd.DataFrame:
    """Nine measurements, a size band with some values missing, and the diagnosis."""
    bundle = load_breast_cancer(as_frame=True)
    frame = bundle.frame[[*NUMBERS, "target"]].rename(columns={"target": LABEL})
    frame[LABEL] = np.where(frame[LABEL] == 1, "benign", "malignant")
    band = pd.cut(bundle.frame["mean area"], bins=[0, 400, 700, 1200, np.inf], labels=["small", "medium", "large", "very large"])
    frame["size_band"] = band.astype(object).where(np.arange(len(frame)) % 17 != 0, np.nan)
    return frame


def build(seed: int = 0, C: float = 1.0) -> Pipeline:  # noqa: N803 - scikit-learn's name
    """The unfitted pipeline; columns are chosen by name, so it is fitted on a frame."""
    prep = ColumnTransformer(
        [
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMBERS),
            ("band", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), ["size_band"]),
        ]
    )
    return Pipeline([("prep", prep), ("model", LogisticRegression(C=C, max_iter=2000, random_state=seed))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=None, help="registry URI (default: $NONSTOP_REGISTRY)")
    parser.add_argument("--model", default="diagnosis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.0, help="ROC AUC a new version may lose against production")
    args = parser.parse_args(argv)

    frame = load_data()
    train, holdout = train_test_split(frame, test_size=0.25, random_state=0, stratify=frame[LABEL])
    pipeline = build(seed=args.seed, C=1.0 + args.seed)
    pipeline.fit(train.drop(columns=LABEL), train[LABEL])

    result = publish_model(
        pipeline, train, holdout=holdout, model=args.model, label=LABEL, registry=args.registry,
        promote=True, gate=Gate(metric="roc_auc", tolerance=args.tolerance),
    )  # fmt: skip
    manifest = result.manifest
    print(f"published {manifest.model} v{manifest.version}: roc_auc {manifest.metrics['roc_auc']:.4f}")
    print(f"{'promoted' if result.promoted else 'not promoted'}: {result.comparison.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
