"""One training run: data in, a published (and maybe promoted) version out.

The candidate and the version in production are scored on the same holdout, so the
promotion decision compares like with like. Publishing happens only after everything
else succeeded: a failure anywhere before it leaves the registry untouched.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import numpy as np
import pandas as pd
import skops
import skops.io as sio
import sklearn
from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import train_test_split

from nonstop.errors import DataValidationError, ModelLoadError
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.manifest import Manifest, ManifestDraft, SampleSet
from nonstop.redact import public_uri
from nonstop.registry import PRODUCTION, Registry, check_name
from nonstop.schema import frame_to_matrix, to_python
from training.card import card_files
from training.data import read_data, validate
from training.pipeline import PRIMARY_METRIC, Estimator, build_pipeline, evaluate
from training.progress import step

SAMPLE_ROWS = 8


class TrainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str
    model: str
    label: str = "target"
    promote: bool = False
    alias: str = PRODUCTION
    min_rows: int = Field(default=50, ge=10)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    seed: int = 0
    estimator: Estimator = "logreg"
    n_estimators: int = Field(default=100, ge=1, le=10_000)


@dataclass(frozen=True)
class Comparison:
    production_version: int | None
    production_metrics: dict[str, float] | None
    not_worse: bool
    reason: str


@dataclass(frozen=True)
class TrainResult:
    manifest: Manifest
    comparison: Comparison
    promoted: bool


def train(options: TrainOptions, registry: Registry) -> TrainResult:
    check_name("model", options.model)
    with step(f"reading {public_uri(options.data)}"):
        frame, fingerprint = read_data(options.data)
    production = _production(registry, options)
    required = production.manifest.features if production else ()
    features = validate(frame, options.label, min_rows=options.min_rows, required=required)

    labels = frame[options.label].to_numpy()
    train_frame, holdout_frame, train_labels, holdout_labels = train_test_split(
        frame, labels, test_size=options.holdout_fraction, random_state=options.seed, stratify=labels
    )
    pipeline = build_pipeline(features, options.seed, options.estimator, options.n_estimators)
    with step(f"fitting on {len(train_frame)} rows"):
        try:
            pipeline.fit(frame_to_matrix(train_frame, features), train_labels)
        except (ValueError, TypeError) as exc:  # scikit-learn's ways of refusing data it was given
            raise DataValidationError(f"training failed on this data: {exc}") from exc
    with step(f"evaluating on {len(holdout_frame)} holdout rows"):
        holdout = frame_to_matrix(holdout_frame, features)
        metrics = evaluate(pipeline, holdout, holdout_labels)
        comparison = _compare(production, holdout_frame, holdout_labels, metrics)

    sample_inputs = holdout[:SAMPLE_ROWS]
    draft = ManifestDraft(
        features=features,
        label=options.label,
        classes=to_python(pipeline.classes_),
        data=fingerprint,
        metrics=metrics,
        parent_version=production.version if production else None,
        libraries=_libraries(),
        samples=SampleSet(
            inputs=[[_json_scalar(v) for v in row] for row in sample_inputs.tolist()],
            outputs=to_python(pipeline.predict(sample_inputs)),
        ),
    )
    with step("writing the model card"):
        extras = card_files(registry, options.model, frame, draft, comparison)
    with step("publishing"):
        manifest = registry.publish(options.model, sio.dumps(pipeline), draft, extras)
    promoted = options.promote and comparison.not_worse
    if promoted:
        registry.promote(options.model, manifest.version, options.alias, actor="nonstop train --promote", reason=comparison.reason)
    return TrainResult(manifest=manifest, comparison=comparison, promoted=promoted)


def _production(registry: Registry, options: TrainOptions) -> LoadedModel | None:
    version = registry.resolve(options.model, options.alias)
    if version is None:
        return None
    try:
        return load_version(registry, options.model, version, TrustPolicy())
    except ModelLoadError:
        return None  # an unusable production is no yardstick; _compare says so


def _compare(
    production: LoadedModel | None,
    holdout_frame: pd.DataFrame, holdout_labels: np.ndarray, metrics: dict[str, float]) -> Comparison:
    if production is None:
        return Comparison(None, None, True, "no usable version in production")
    theirs = evaluate(production.estimator, frame_to_matrix(holdout_frame, production.manifest.features), holdout_labels)
    ours, best = metrics[PRIMARY_METRIC], theirs[PRIMARY_METRIC]
    verdict = "not worse than" if ours >= best else "worse than"
    return Comparison(
        production.version,
        theirs,
        ours >= best,
        f"{PRIMARY_METRIC} {ours:.4f} is {verdict} production v{production.version}'s {best:.4f} on the same holdout",
    )


def _json_scalar(value: object) -> object:
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _libraries() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "skops": skops.__version__,
    }

