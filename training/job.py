"""`nonstop train`: data in, a built-in or the user's own estimator fitted, a published
(and maybe promoted) version out, through the same path as the publishing API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from nonstop.capture import CaptureConfig, root_of
from nonstop.config import Settings
from nonstop.formats import DEFAULT_FORMAT, format_named
from nonstop.loading import TrustPolicy
from nonstop.manifest import Task
from nonstop.redact import public_uri
from nonstop.registry import PRODUCTION, Registry, check_name
from training.card import summarize
from training.metrics import check_gate_metric
from training.pipeline import Estimator, build_pipeline, load_factory, unfitted_from
from training.progress import step
from training.comparison import Comparison
from training.publish import Candidate, Gate, TrainResult, fit_matrix, production_version, publish_candidate, resolve_task
from training.sources import open_source
from training.stream import check_scanned_labels, fill, scan, split

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
    since: str | None = Field(default=None, description="only the partitions of the newest N days, e.g. 30d")
    capture_destination: str | None = Field(default=None, description="for capture://MODEL: the capture destination, if not <registry>/captures")


def train(options: TrainOptions, registry: Registry) -> TrainResult:
    """Two passes over the data (training/stream.py): labels first, then the features
    straight into the one matrix the fit needs; the profile for the card is taken before
    the built-ins' fit overwrites the training rows in place."""
    check_name("model", options.model)
    factory = load_factory(options.pipeline) if options.pipeline else None
    capture_root = root_of(registry.uri, CaptureConfig(destination=options.capture_destination))
    source = open_source(options.data, since=options.since, capture_root=capture_root)
    with step(f"scanning {public_uri(options.data)}"):
        scanned = scan(source.parts, options.label)
    user_model = unfitted_from(factory, options.pipeline or "") if factory else None
    task = resolve_task(user_model, scanned.labels.to_frame(), options.label, options.task)
    check_gate_metric(task, options.gate_metric)
    check_scanned_labels(scanned, task=task, min_rows=options.min_rows)
    rows = split(scanned.labels, task=task, holdout_fraction=options.holdout_fraction, seed=options.seed)
    with step(f"reading {len(scanned.labels)} rows of {len(scanned.features)} features"):
        data = fill(scanned, rows, source)
    features = data.features
    summary = summarize(registry, options.model, data.frame(), features, production_version(registry, options.model, options.alias))
    estimator = user_model or build_pipeline(features, options.seed, options.estimator, options.n_estimators, task)
    fit_matrix(estimator, data.train, data.labels[: data.train_rows], features, by_name=user_model is not None, in_place=user_model is None)
    candidate = Candidate(estimator, features, task, format_named(DEFAULT_FORMAT))
    return publish_candidate(
        registry, options.model, candidate, summary, data.holdout_frame(options.label), options.label, data.fingerprint,
        promote=options.promote or options.force_promote, alias=options.alias,
        gate=Gate(metric=options.gate_metric, tolerance=options.gate_tolerance),
        force_promote=options.force_promote, policy=TrustPolicy.from_settings(Settings.from_env()),
    )  # fmt: skip
