"""Publish a model from your own training code: the call a data scientist's script makes.

    from training.publish import Gate, publish_model
    result = publish_model(my_pipeline, frame, model="prices", label="price",
                           promote=True, gate=Gate(metric="rmse", tolerance=0.5))

The estimator is any scikit-learn-compatible estimator or Pipeline. Give it unfitted and
a holdout is cut from the data and the rest fits it; give it fitted together with the
`holdout` it never saw. The candidate and the version in production are scored on the
same holdout through the input path serving uses. Publishing happens only after every
check passed, so a failure leaves the registry untouched; promotion goes through the
gate, which fails closed: a production version that cannot be loaded (with serving's own
trust policy) or evaluated blocks promotion unless `force_promote` overrides it, and the
override is written into the manifest and the promotion ledger.

The same script runs unchanged on a laptop, under `ray job submit -- python my_train.py`
and in a KubeRay RayJob: the registry comes from the argument or NONSTOP_REGISTRY.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import skops
from pydantic import BaseModel, ConfigDict, Field
from sklearn.base import is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from nonstop.config import Settings
from nonstop.errors import ConfigError, DataValidationError, NonstopError
from nonstop.formats import DEFAULT_FORMAT, ModelFormat, format_named
from nonstop.loading import LoadedModel, TrustPolicy, estimator_inputs, load_version
from nonstop.manifest import FeatureSpec, GateRecord, Manifest, ManifestDraft, SampleSet, Task
from nonstop.registry import PRODUCTION, Registry, check_name
from nonstop.schema import frame_to_matrix, matrix_to_frame, to_python
from training.card import DataSummary, card_files, summarize
from training.comparison import Comparison
from training.data import fingerprint, validate
from training.metrics import HIGHER_IS_BETTER, check_gate_metric, detect_task, evaluate
from training.pipeline import fit_in_place
from training.progress import step

SAMPLE_ROWS = 8
HOLDOUT_BATCH_ROWS = 65_536


class Gate(BaseModel):
    """Promote only if the candidate's `metric` (default per task: accuracy, rmse) is not
    worse than production's by more than `tolerance`, in the metric's own units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str | None = None
    tolerance: float = Field(default=0.0, ge=0.0)


@dataclass(frozen=True)
class TrainResult:
    manifest: Manifest
    comparison: Comparison
    promoted: bool


class PromotionBlocked(NonstopError):
    """Published but not promoted because production could not be measured; the CLI exits
    non-zero with this message."""

    def __init__(self, manifest: Manifest, comparison: Comparison) -> None:
        super().__init__(
            f"published {manifest.model} v{manifest.version} but did NOT promote it: {comparison.reason}; "
            "fix production, or pass --force-promote (force_promote=True) to promote anyway"
        )
        self.manifest = manifest


@dataclass(frozen=True)
class Candidate:
    """A fitted estimator with what the manifest says about it."""

    estimator: Any
    features: list[FeatureSpec]
    task: Task
    fmt: ModelFormat


def publish_model(
    estimator: Any,
    data: pd.DataFrame,
    *,
    model: str,
    label: str,
    holdout: pd.DataFrame | None = None,
    task: Task | None = None,
    registry: Registry | str | None = None,
    promote: bool = False,
    alias: str = PRODUCTION,
    gate: Gate | None = None,
    force_promote: bool = False,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    source: str = "python",
    model_format: str = DEFAULT_FORMAT,
) -> TrainResult:
    """Validate, fit if unfitted, score against production, publish, maybe promote.

    `data` holds the features and the label (the training rows, or all rows when
    `holdout` is None and the estimator is unfitted). Types beyond the format's own
    trust list come from `NONSTOP_TRUSTED_TYPES`, the setting serving reads: production is
    judged by what serving would load, and what serving would refuse is not published.
    """
    reg = registry if isinstance(registry, Registry) else _open(registry)
    check_name("model", model)
    task = resolve_task(estimator, data, label, task)
    features = validate(data, label, min_rows=10, task=task)
    fitted = _is_fitted(estimator)
    if holdout is None:
        if fitted:
            raise ConfigError("a fitted estimator needs `holdout`: rows it was not fitted on, to score it and production")
        stratify = data[label] if task == "classification" else None
        data, holdout = train_test_split(data, test_size=holdout_fraction, random_state=seed, stratify=stratify)
    _check_holdout(holdout, features, label)
    if not fitted:
        fit(estimator, data, features, label, by_name=True)
    candidate = Candidate(estimator, features, task, format_named(model_format))
    summary = summarize(reg, model, pd.concat([data, holdout], ignore_index=True), features, production_version(reg, model, alias))
    return publish_candidate(
        reg, model, candidate, summary, holdout, label, fingerprint(data, source),
        promote=promote, alias=alias, gate=gate or Gate(), force_promote=force_promote, policy=TrustPolicy.from_settings(Settings.from_env()),
    )  # fmt: skip


def fit(estimator: Any, frame: pd.DataFrame, features: list[FeatureSpec], label: str, *, by_name: bool) -> None:
    """Fit on the rows as serving will encode them: a named frame, or the plain matrix the
    built-ins address by position."""
    fit_matrix(estimator, frame_to_matrix(frame, features), frame[label].to_numpy(), features, by_name=by_name)


def fit_matrix(
    estimator: Any, matrix: np.ndarray, labels: np.ndarray, features: list[FeatureSpec], *, by_name: bool, in_place: bool = False
) -> None:
    """`in_place`: a built-in pipeline may overwrite `matrix` (training/pipeline.py
    fit_in_place) rather than copy it, for a fit that needs little more than its matrix."""
    with step(f"fitting on {len(matrix)} rows"):
        try:
            if not (in_place and fit_in_place(estimator, matrix, labels)):
                estimator.fit(matrix_to_frame(matrix, features) if by_name else matrix, labels)
        except Exception as exc:  # any estimator, the user's own included: report what it raised
            raise DataValidationError(f"training failed on this data: {exc}") from exc


def production_version(registry: Registry, model: str, alias: str) -> int | None:
    """The version a candidate is compared with, if the model has one in `alias`."""
    return registry.resolve(model, alias) if registry.versions(model) else None


def publish_candidate(
    registry: Registry,
    model: str,
    candidate: Candidate,
    summary: DataSummary,
    holdout: pd.DataFrame,
    label: str,
    data_fingerprint: Any,
    *,
    promote: bool,
    alias: str,
    gate: Gate,
    force_promote: bool,
    policy: TrustPolicy,
) -> TrainResult:
    metric = check_gate_metric(candidate.task, gate.metric)
    labels = holdout[label].to_numpy()
    with step(f"evaluating on {len(holdout)} holdout rows"):
        matrix = frame_to_matrix(holdout, candidate.features)
        predicted, probabilities, classes = _predictions(candidate, matrix)
        metrics = evaluate(candidate.task, predicted, labels, probabilities, classes)
        comparison = _compare(registry, model, alias, policy, candidate.task, holdout, labels, metrics, metric, gate.tolerance)
    forced = promote and force_promote and not comparison.not_worse
    artifact = candidate.fmt.dumps(candidate.estimator)
    needed = candidate.fmt.needs(artifact)
    policy.refuse_untrusted(needed, f"this {model} version")  # serving would refuse it: nothing is published
    sample_rows = matrix[:SAMPLE_ROWS]
    draft = ManifestDraft(
        features=candidate.features,
        label=label,
        task=candidate.task,
        classes=classes,
        estimator=f"{type(candidate.estimator).__module__}.{type(candidate.estimator).__qualname__}",
        format=candidate.fmt.name,
        data=data_fingerprint,
        metrics=metrics,
        parent_version=comparison.production_version,
        libraries=_libraries(),
        samples=SampleSet(
            inputs=[[_json_scalar(v) for v in row] for row in sample_rows.tolist()],
            outputs=to_python(predicted[:SAMPLE_ROWS]),
            probabilities=None if probabilities is None else probabilities[:SAMPLE_ROWS].tolist(),
        ),
        gate=GateRecord(
            metric=metric, higher_is_better=HIGHER_IS_BETTER[metric], tolerance=gate.tolerance,
            production_version=comparison.production_version, passed=comparison.not_worse,
            reason=comparison.reason, forced=forced,
        ),
        trusted_types=needed,
    )  # fmt: skip
    with step("writing the model card"):
        extras = card_files(model, draft, comparison, summary)
    with step("publishing"):
        manifest = registry.publish(model, artifact, draft, extras)
    promoted = promote and (comparison.not_worse or force_promote)
    if promoted:
        why = f"forced past the gate: {comparison.reason}" if forced else comparison.reason
        registry.promote(model, manifest.version, alias, reason=why, forced=forced)
    elif promote and comparison.blocked:
        raise PromotionBlocked(manifest, comparison)
    return TrainResult(manifest=manifest, comparison=comparison, promoted=promoted)


def _predictions(candidate: Candidate, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[Any]]:
    """Predictions (and class probabilities) on the holdout, through serving's input path."""
    estimator, fmt = candidate.estimator, candidate.fmt
    try:
        predicted = _batched(lambda rows: fmt.predict(estimator, estimator_inputs(estimator, rows, candidate.features)), matrix)
        probabilities = (
            _batched(lambda rows: fmt.predict_proba(estimator, estimator_inputs(estimator, rows, candidate.features)), matrix)
            if candidate.task == "classification"
            else None
        )
    except Exception as exc:  # the user's estimator: whatever it raises, nothing is published
        raise DataValidationError(f"the fitted model cannot predict the holdout: {type(exc).__name__}: {exc}") from exc
    if candidate.task == "regression":
        if not np.issubdtype(predicted.dtype, np.number):
            raise ConfigError(f"a regression model must predict numbers; it predicted {predicted.dtype} values")
        return predicted.astype(np.float64), None, []
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        return predicted, None, sorted(set(to_python(predicted)))
    return predicted, probabilities, to_python(classes)


def _compare(
    registry: Registry,
    model: str,
    alias: str,
    policy: TrustPolicy,
    task: Task,
    holdout: pd.DataFrame,
    labels: np.ndarray,
    metrics: dict[str, float],
    metric: str,
    tolerance: float,
) -> Comparison:
    """The gate fails closed: production that exists but cannot be measured blocks."""
    version = production_version(registry, model, alias)
    if version is None:
        return Comparison(None, None, True, f"no version in {alias!r} yet")
    try:
        production = load_version(registry, model, version, policy)
        theirs = _score(production, task, holdout, labels)
    except NonstopError as exc:
        return Comparison(version, None, False, f"production v{version} could not be loaded: {exc.message}", blocked=True)
    except Exception as exc:  # production's estimator on new rows: any failure means it cannot be measured
        problem = f"{type(exc).__name__}: {exc}"
        return Comparison(version, None, False, f"production v{version} could not be evaluated on this holdout ({problem})", blocked=True)
    if metric not in theirs or metric not in metrics:
        lacking = "production" if metric not in theirs else "this version"
        return Comparison(version, theirs, False, f"{metric} is not available for {lacking}", blocked=True)
    ours, best = metrics[metric], theirs[metric]
    higher = HIGHER_IS_BETTER[metric]
    ok = ours >= best - tolerance if higher else ours <= best + tolerance
    slack = f" (tolerance {tolerance:g})" if tolerance else ""
    verdict = "not worse than" if ok else "worse than"
    return Comparison(
        version, theirs, ok, f"{metric} {ours:.4f} is {verdict} production v{version}'s {best:.4f}{slack} on the same holdout"
    )


def _score(production: LoadedModel, task: Task, holdout: pd.DataFrame, labels: np.ndarray) -> dict[str, float]:
    if production.manifest.task != task:
        raise ValueError(f"production is a {production.manifest.task} model and this one does {task}")
    missing = [f.name for f in production.manifest.features if f.name not in holdout.columns]
    if missing:
        raise ValueError(f"the holdout lacks production's feature(s) {', '.join(missing)}")
    matrix = frame_to_matrix(holdout, production.manifest.features)
    predicted = _batched(lambda rows: np.asarray(production.predict(rows)), matrix)
    probabilities = None
    if task == "classification" and production.manifest.classes:
        try:
            probabilities = _batched(lambda rows: np.asarray(production.predict_proba(rows)), matrix)
        except NonstopError:
            probabilities = None  # a classifier without probabilities: scored without them
    return evaluate(task, predicted, labels, probabilities, production.manifest.classes)


def _batched(predict: Callable[[np.ndarray], np.ndarray | None], matrix: np.ndarray) -> Any:
    """Predictions a batch of rows at a time: the pipeline's copies of a whole holdout
    (imputed, scaled) would cost more memory than the rows themselves."""
    parts = [predict(matrix[start : start + HOLDOUT_BATCH_ROWS]) for start in range(0, max(len(matrix), 1), HOLDOUT_BATCH_ROWS)]
    if any(part is None for part in parts):
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)  # type: ignore[arg-type]


def resolve_task(estimator: Any, data: pd.DataFrame, label: str, task: Task | None) -> Task:
    """The estimator's own declaration wins over a guess from the label; a stated task
    that contradicts the estimator is refused."""
    declared = _declared_task(estimator)
    if task is not None and declared is not None and task != declared:
        raise ConfigError(f"task {task!r} but the estimator is a {declared} model ({type(estimator).__name__})")
    if task is not None or declared is not None:
        return task or declared  # type: ignore[return-value]
    if label not in data.columns:
        return "classification"  # validate() names the missing label
    return detect_task(data[label])


def _declared_task(estimator: Any) -> Task | None:
    if estimator is None:
        return None
    try:
        return "classification" if is_classifier(estimator) else "regression" if is_regressor(estimator) else None
    except AttributeError:  # an estimator without scikit-learn's tags declares nothing
        return None


def _is_fitted(estimator: Any) -> bool:
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    except TypeError as exc:  # not an estimator at all
        raise ConfigError(f"{type(estimator).__name__} is not a scikit-learn estimator: {exc}") from exc
    return True


def _check_holdout(holdout: pd.DataFrame, features: list[FeatureSpec], label: str) -> None:
    missing = [f.name for f in features if f.name not in holdout.columns] + ([label] if label not in holdout.columns else [])
    if missing:
        raise DataValidationError(f"the holdout lacks column(s) {', '.join(missing)}")
    if len(holdout) == 0:
        raise DataValidationError("the holdout has no rows")
    nulls = int(holdout[label].isna().sum())
    if nulls:
        raise DataValidationError(f"the holdout's label column {label!r} has {nulls} null value(s)")


def _open(uri: str | None) -> Registry:
    settings = Settings.from_env(registry=uri)
    return Registry(settings.registry, signing_key=settings.signing_key)


def _json_scalar(value: object) -> object:
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _libraries() -> dict[str, str]:
    found = {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "skops": skops.__version__,
    }
    for name in ("lightgbm", "xgboost"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = module.__version__
    return found
