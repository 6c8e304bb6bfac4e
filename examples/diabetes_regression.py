"""Disease progression one year on, from scikit-learn's bundled diabetes data.

A regression written the way a data scientist writes it: a frame, a train/holdout split,
a gradient-boosting regressor fitted on named columns; then one call publishes it and
promotes it if its RMSE on the holdout is not worse than production's.

    python examples/diabetes_regression.py --registry registry
    ray job submit --working-dir . -- python examples/diabetes_regression.py
"""

from __future__ import annotations

import argparse

import pandas as pd
from sklearn.datasets import load_diabetes
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.model_selection import train_test_split

from training.publish import Gate, publish_model

LABEL = "progression"


def load_data() -> pd.DataFrame:
    """Age, sex, BMI, blood pressure and six blood serum measurements, unscaled."""
    return load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": LABEL})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=None, help="registry URI (default: $NONSTOP_REGISTRY)")
    parser.add_argument("--model", default="diabetes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.0, help="RMSE a new version may lose against production")
    args = parser.parse_args(argv)

    frame = load_data()
    train, holdout = train_test_split(frame, test_size=0.25, random_state=0)
    model = GradientBoostingRegressor(n_estimators=150, max_depth=2, learning_rate=0.05, subsample=0.8, random_state=args.seed)
    model.fit(train.drop(columns=LABEL), train[LABEL])

    result = publish_model(
        model, train, holdout=holdout, model=args.model, label=LABEL, registry=args.registry,
        promote=True, gate=Gate(metric="rmse", tolerance=args.tolerance),
    )  # fmt: skip
    manifest = result.manifest
    print(f"published {manifest.model} v{manifest.version}: rmse {manifest.metrics['rmse']:.2f}, r2 {manifest.metrics['r2']:.3f}")
    print(f"{'promoted' if result.promoted else 'not promoted'}: {result.comparison.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
