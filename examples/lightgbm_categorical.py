"""Wine cultivar from its chemistry, with LightGBM and a categorical column.

LightGBM takes pandas' `category` dtype natively; the served model gets the column with
the same dtype, and LightGBM maps it back onto the categories it was trained with (an
unseen category is treated as missing). Needs `pip install 'nonstop[lightgbm]'`, and
LightGBM trusted by name in the one setting training and serving read (its boosters are
off the format's trust list: their insides cannot be checked at load):

    export NONSTOP_TRUSTED_TYPES=lightgbm.basic.Booster,lightgbm.sklearn.LGBMClassifier

    python examples/lightgbm_categorical.py --registry registry
    ray job submit --working-dir . -- python examples/lightgbm_categorical.py
"""

from __future__ import annotations

import argparse

import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

from training.publish import Gate, publish_model

LABEL = "cultivar"


def load_data() -> pd.DataFrame:
    """Thirteen measurements and the colour's hue as a band: pale, medium or deep."""
    frame = load_wine(as_frame=True).frame.rename(columns={"target": LABEL})
    frame[LABEL] = frame[LABEL].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    frame["hue_band"] = pd.cut(frame.pop("hue"), bins=[0, 0.78, 1.0, 2.0], labels=["deep", "medium", "pale"])
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=None, help="registry URI (default: $NONSTOP_REGISTRY)")
    parser.add_argument("--model", default="wine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.0, help="accuracy a new version may lose against production")
    args = parser.parse_args(argv)

    frame = load_data()
    train, holdout = train_test_split(frame, test_size=0.25, random_state=0, stratify=frame[LABEL])
    model = LGBMClassifier(n_estimators=60, num_leaves=7, min_child_samples=5, subsample=0.8, subsample_freq=1,
                           random_state=args.seed, verbose=-1)  # fmt: skip
    model.fit(train.drop(columns=LABEL), train[LABEL], categorical_feature=["hue_band"])

    result = publish_model(
        model, train, holdout=holdout, model=args.model, label=LABEL, registry=args.registry,
        promote=True, gate=Gate(metric="accuracy", tolerance=args.tolerance),
    )  # fmt: skip
    manifest = result.manifest
    print(f"published {manifest.model} v{manifest.version}: accuracy {manifest.metrics['accuracy']:.3f}, classes {manifest.classes}")
    print(f"{'promoted' if result.promoted else 'not promoted'}: {result.comparison.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
