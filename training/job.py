"""`nonstop train`: data in, a built-in or the user's own estimator fitted, a published
(and maybe promoted) version out, through the same path as the publishing API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import train_test_split

from nonstop.formats import DEFAULT_FORMAT, format_named
from nonstop.loading import TrustPolicy
from nonstop.manifest import Task
from nonstop.redact import public_uri
from nonstop.registry import PRODUCTION, Registry, check_name
from training.data import read_data, validate
from training.metrics import check_gate_metric
from training.pipeline import Estimator, build_pipeline, load_factory, unfitted_from
from training.progress import step
from training.publish import Candidate, Comparison, Gate, TrainResult, fit, publish_candidate, resolve_task

__all__ = ["Comparison", "TrainOptions", "TrainResult", "train"]


class TrainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str
    model: str
    label: str = "target"
    task: Task | None = Field(default=None, description="detected from the estimator, else from the label")
    promote: bool = False
    force_promote: bool = Field(default=False, description="promote even past a failed or blocked gate (recorded)")
    alias: str = PRODUCTION
    min_rows: int = Field(default=50, ge=10)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    seed: int = 0
    estimator: Estimator = "auto"
    pipeline: str | None = Field(default=None, description="module:function or file.py:function returning an unfitted estimator")
    n_estimators: int = Field(default=100, ge=1, le=10_000)
    gate_metric: str | None = None
    gate_tolerance: float = Field(default=0.0, ge=0.0)
    trusted_types: tuple[str, ...] = Field(default=(), description="as the serving configuration's trusted_types")


def train(options: TrainOptions, registry: Registry) -> TrainResult:
    check_name("model", options.model)
    factory = load_factory(options.pipeline) if options.pipeline else None
    with step(f"reading {public_uri(options.data)}"):
        frame, fingerprint = read_data(options.data)
    user_model = unfitted_from(factory, options.pipeline or "") if factory else None
    task = resolve_task(user_model, frame, options.label, options.task)
    check_gate_metric(task, options.gate_metric)
    features = validate(frame, options.label, min_rows=options.min_rows, task=task)
    estimator = user_model or build_pipeline(features, options.seed, options.estimator, options.n_estimators, task)
    stratify = frame[options.label] if task == "classification" else None
    train_frame, holdout = train_test_split(frame, test_size=options.holdout_fraction, random_state=options.seed, stratify=stratify)
    fit(estimator, train_frame, features, options.label, by_name=user_model is not None)
    candidate = Candidate(estimator, features, task, format_named(DEFAULT_FORMAT))
    return publish_candidate(
        registry, options.model, candidate, train_frame, holdout, options.label, fingerprint,
        promote=options.promote or options.force_promote, alias=options.alias,
        gate=Gate(metric=options.gate_metric, tolerance=options.gate_tolerance),
        force_promote=options.force_promote, policy=TrustPolicy(extra_types=options.trusted_types),
    )  # fmt: skip
