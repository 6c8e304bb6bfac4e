"""`nonstop score` on Ray Data: read a dataset, score it on an actor pool, write Parquet.

The version is loaded here first, by the same loader and trust policy as serving, so a
corrupt, untrusted or unsigned-when-required version is refused before any row is read
for scoring. Each worker of the pool then loads it once more for itself (one load per
worker, not per batch). Scored rows go to `<out>/scored`, refused rows with their reason
to `<out>/rejects`, written by the actors as they score (nonstop/batch/output.py): no row
is dropped without a trace, and none is written twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from nonstop.batch import source
from nonstop.batch.evidence import Comparison, compare
from nonstop.batch.output import BatchWriter, Totals, discard, job_prefix, keep_only, prepare_folders
from nonstop.batch.scorer import COMPARE_PREDICTION, PREDICTION, BatchScorer
from nonstop.capture import filesystem
from nonstop.columns import MAX_STRING_LENGTH
from nonstop.config import Settings
from nonstop.errors import InvalidInput
from nonstop.loading import LoadedModel, TrustPolicy, load_version
from nonstop.redact import public_uri
from nonstop.registry import PRODUCTION, Registry



class ScoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: int | None = Field(default=None, ge=1, description="None: the version `alias` points at")
    alias: str = PRODUCTION
    data: str
    out: str
    keep: tuple[str, ...] = ()
    probabilities: bool = False
    compare: int | None = Field(default=None, ge=1)
    label: str | None = Field(default=None, description="a column of labels: carried through, and scored in the comparison")
    baseline: str | None = Field(
        default=None, description="a carried column of answers to compare with (`nonstop replay`: what production answered)"
    )
    workers: int = Field(default=1, ge=1)
    worker_cpus: float | None = Field(default=None, ge=0, description="CPUs each scoring actor reserves; None: `reservations`")
    task_cpus: float | None = Field(default=None, ge=0, description="CPUs each read, split or write task reserves; None: `reservations`")
    batch_size: int = Field(default=8192, ge=1)
    max_string_length: int = Field(default=MAX_STRING_LENGTH, ge=1)


class ScoreSummary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: int
    compare_version: int | None
    scored: int
    rejected: int
    seconds: float
    rows_per_s: float
    comparison: Comparison | None = Field(description="with --compare: agreement, and quality where labelled")
    out: str


@dataclass(frozen=True)
class Prepared:
    """The version(s) loaded and checked in the caller's process, before any Ray work."""

    version: int
    loaded: LoadedModel
    compare: LoadedModel | None
    policy: TrustPolicy


def resolve_version(registry: Registry, options: ScoreOptions) -> int:
    if options.version is not None:
        return options.version
    version = registry.resolve(options.model, options.alias)
    if version is None:
        raise InvalidInput(f"model {options.model!r} has no alias {options.alias!r}: name a --version")
    return version


def policy_of(settings: Settings) -> TrustPolicy:
    """Serving's policy: trust beyond the format's list is the one setting,
    NONSTOP_TRUSTED_TYPES, never a flag of one command (SECURITY.md, trust settings)."""
    return TrustPolicy(extra_types=tuple(sorted(settings.trusted_types)))


def prepare(options: ScoreOptions, settings: Settings) -> Prepared:
    """Load the version(s) as a replica would, or raise naming why: a corrupt, untrusted or
    unsigned-when-required version ends the job here, before a cluster is even joined."""
    registry = Registry(settings.registry, signing_key=settings.signing_key)
    policy = policy_of(settings)
    version = resolve_version(registry, options)
    loaded = load_version(registry, options.model, version, policy)
    compare = load_version(registry, options.model, options.compare, policy) if options.compare else None
    BatchScorer(loaded, keep=carried(options), probabilities=options.probabilities, compare=compare,
                max_string_length=options.max_string_length)  # fmt: skip
    return Prepared(version=version, loaded=loaded, compare=compare, policy=policy)


class _Worker:
    """One per actor of the pool: loads the version(s) once, then scores and writes batch
    after batch (nonstop/batch/output.py)."""

    def __init__(
        self, settings: Settings, options: ScoreOptions, version: int, policy: TrustPolicy, prefix: str,
        compared: tuple[str, ...],
    ) -> None:  # fmt: skip
        registry = Registry(settings.registry, signing_key=settings.signing_key)
        compare = load_version(registry, options.model, options.compare, policy) if options.compare else None
        scorer = BatchScorer(
            load_version(registry, options.model, version, policy),
            keep=carried(options),
            probabilities=options.probabilities,
            compare=compare,
            max_string_length=options.max_string_length,
        )
        out_fs, out = filesystem(options.out)  # the URI's own endpoint and credentials, as the read's
        self.write = BatchWriter(scorer, out_fs, out, prefix, compared)

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.write(table)


def carried(options: ScoreOptions) -> tuple[str, ...]:
    """The input columns written beside the outputs: --keep, then the label and baseline columns."""
    extra = [c for c in (options.label, options.baseline) if c is not None and c not in options.keep]
    return options.keep + tuple(dict.fromkeys(extra))


AUTO_WORKER_CPUS, AUTO_TASK_CPUS = 0.5, 1.0


@dataclass(frozen=True)
class Reservations:
    worker_cpus: float
    task_cpus: float
    tasks: int  # read, split and write tasks at once, whatever they reserve


def reservations(options: ScoreOptions, free_cpus: float) -> Reservations:
    """What the job reserves. Given options win. Else half a CPU per actor (a pool as large
    as the cluster still leaves room for the read: a full pool deadlocked it) and one per
    task, where the cluster has that free; where it has not (a cluster whose CPUs Serve's
    replicas hold, as `nonstop up`'s), nothing: the job then runs beside the replicas,
    bounded by its actor count and task count instead of waiting for ever on CPUs that
    never come free."""
    fits = free_cpus >= options.workers * AUTO_WORKER_CPUS + AUTO_TASK_CPUS
    worker = options.worker_cpus if options.worker_cpus is not None else (AUTO_WORKER_CPUS if fits else 0.0)
    task = options.task_cpus if options.task_cpus is not None else (AUTO_TASK_CPUS if fits else 0.0)
    return Reservations(worker_cpus=worker, task_cpus=task, tasks=max(2, options.workers))


def check_before_scoring(options: ScoreOptions, schema: Any) -> None:
    """Refuse what would refuse every row, before any is scored: --keep or --label
    columns the data lacks."""
    names = set(schema.names) if schema is not None else set()
    missing = [k for k in carried(options) if k not in names]
    if missing:
        raise InvalidInput(f"--keep/--label column(s) not in the data: {', '.join(missing)}")


def score(options: ScoreOptions, settings: Settings, prepared: Prepared | None = None, dataset: Any = None) -> ScoreSummary:
    """Score `options.data` (or a dataset the caller built: `nonstop replay`) on the
    connected Ray cluster. `prepared`: the caller has loaded and checked the version."""
    import ray
    import ray.data

    prepared = prepared or prepare(options, settings)
    reserved = reservations(options, ray.available_resources().get("CPU", 0.0))
    if dataset is None:
        check_before_scoring(options, source.schema(options.data))
        dataset = source.read(options.data, reserved.task_cpus, reserved.tasks)
    else:
        check_before_scoring(options, dataset.schema())
    compared = _compared(options, prepared)
    out_fs, out = filesystem(options.out)
    prefix = job_prefix()
    prepare_folders(out_fs, out)

    started = time.perf_counter()
    summaries = dataset.map_batches(
        _Worker,
        fn_constructor_kwargs={"settings": settings, "options": options, "version": prepared.version,
                               "policy": prepared.policy, "prefix": prefix, "compared": compared},
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=reserved.worker_cpus,
        zero_copy_batch=True,
    )  # fmt: skip
    try:
        totals = Totals(compared).add(summaries.iter_batches(batch_size=None, batch_format="pyarrow"))
    except BaseException:
        discard(out_fs, out, prefix)
        raise
    keep_only(out_fs, out, prefix, totals.files)
    seconds = time.perf_counter() - started
    return ScoreSummary(
        model=options.model, version=prepared.version, compare_version=options.compare,
        scored=totals.rows - totals.refused, rejected=totals.refused, seconds=seconds,
        rows_per_s=totals.rows / seconds if seconds else 0.0,
        comparison=_comparison(options, prepared, totals), out=public_uri(options.out),
    )  # fmt: skip


def _compared(options: ScoreOptions, prepared: Prepared) -> tuple[str, ...]:
    """The columns a comparison needs back from the actors: the baseline's answers, the
    version's, and the labels."""
    baseline = COMPARE_PREDICTION if prepared.compare is not None else options.baseline
    if baseline is None:
        return ()
    return (baseline, PREDICTION) + ((options.label,) if options.label else ())


def _comparison(options: ScoreOptions, prepared: Prepared, totals: Totals) -> Comparison | None:
    """The one summary (nonstop/batch/evidence.py) of the scored rows against the
    --compare version's answers, or against a carried column of answers."""
    if not totals.compared:
        return None
    baseline, name = (COMPARE_PREDICTION, f"v{prepared.compare.version}") if prepared.compare else (options.baseline, "served")
    values = totals.values
    return compare(
        values.get(baseline, []), values.get(PREDICTION, []),
        task=prepared.loaded.manifest.task, baseline_name=name, candidate_version=prepared.version,
        labels=values.get(options.label, []) if options.label else None,
    )  # fmt: skip
