"""Prometheus metrics of a replica, exported through Ray's metrics endpoint.

Ray prefixes them with `ray_` and Serve adds `deployment`, `replica` and `application`
tags, so every series below can be told apart by replica without our help. The Grafana
dashboard in docs/grafana is built on exactly these names. Every `reason` tag is an
error's reason code (nonstop/errors.py): one vocabulary for refused requests and
refused versions. Served versions and load failures are derived from the replica's
`ReplicaStatus`, the same report `nonstop status` prints.
"""

from __future__ import annotations

import time
from collections import Counter as Tally

from ray.serve.metrics import Counter, Gauge, Histogram

from nonstop.quality import VersionQuality
from serve_app.replica.state import LoadFailure, ReplicaStatus

_SWAP_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
_BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
# Rows predicted are tallied in the replica and handed to Ray at most this often: a Ray
# counter increment per request (tags checked, a record built) costs a replica CPU on
# every prediction, and Prometheus reads counters every several seconds anyway.
FLUSH_S = 1.0
Served = tuple[str, str, str]  # model, version, role


class ServingMetrics:
    """Implements the data plane's `Observer` and follows the replica's status."""

    def __init__(self) -> None:
        self._predictions = Counter(
            "nonstop_predictions", description="Rows predicted", tag_keys=("model", "version")
        )
        self._errors = Counter(
            "nonstop_prediction_errors", description="Refused or failed predict requests", tag_keys=("model", "reason")
        )
        self._load_failures = Counter(
            "nonstop_model_load_failures", description="Versions refused by this replica", tag_keys=("model", "reason")
        )
        self._swap = Histogram(
            "nonstop_swap_duration_seconds",
            description="Load and verification time of each version swapped in",
            boundaries=_SWAP_BUCKETS,
            tag_keys=("model",),
        )
        self._served = Gauge(
            "nonstop_served_version",
            description="1 for each version this replica holds, by role",
            tag_keys=("model", "version", "role"),
        )
        self._ready = Gauge("nonstop_ready", description="1 if this replica has a version to answer with", tag_keys=("model",))
        self._batch = Histogram(
            "nonstop_batch_size", description="Requests predicted together", boundaries=_BATCH_BUCKETS, tag_keys=("model",)
        )
        self._captured = Counter("nonstop_capture_rows", description="Rows written to the capture store", tag_keys=("model",))
        self._dropped = Counter(
            "nonstop_capture_dropped_rows",
            description="Rows not captured: buffer full or storage failing; requests were answered all the same",
            tag_keys=("model", "reason"),
        )
        self._outcomes = Counter(
            "nonstop_outcomes", description="Outcomes stored, by whether a captured record had their id", tag_keys=("model", "known")
        )
        # many models (serve_app/replica/models.py): per replica, not per model, so a
        # thousand models cost five series per replica
        self._cache = Counter(
            "nonstop_model_cache_requests", description="Requests for a model held (hit) or loaded for them (load)",
            tag_keys=("outcome",),
        )  # fmt: skip
        self._evictions = Counter("nonstop_model_evictions", description="Models evicted to stay within the budget")
        self._cold = Histogram(
            "nonstop_model_load_seconds", description="Cold loads of a model, as its requests waited for them", boundaries=_SWAP_BUCKETS
        )
        self._held_models = Gauge("nonstop_models_held", description="Models this replica holds")
        self._held_bytes = Gauge("nonstop_models_held_bytes", description="Estimated bytes of the versions this replica holds")
        self._seen: dict[str, tuple[int, int, int]] = {}  # model -> hits, loads, evictions last reported
        self._quality = Gauge(
            "nonstop_live_quality",
            description="Live quality per version and role on the captured requests whose outcomes arrived "
            "(accuracy, f1_macro, and roc_auc, log_loss on the rows captured with probabilities | rmse, mae, r2), "
            "over the capture block's quality window; a metric that cannot be computed is not set",
            tag_keys=("model", "version", "role", "metric"),
        )
        self._quality_rows = Gauge(
            "nonstop_live_quality_rows",
            description="Rows behind the live quality, per version and role: captured, labelled, "
            "and (a classifier) labelled with probabilities",
            tag_keys=("model", "version", "role", "kind"),
        )
        self._live: tuple[str, list[VersionQuality]] | None = None
        self._rows: Tally[tuple[str, int]] = Tally()
        self._flushed_at = time.monotonic()
        self._serving: set[Served] = set()
        self._model: str | None = None
        self._last_failure: LoadFailure | None = None

    def predicted(self, model: str, version: int, rows: int) -> None:
        self._rows[model, version] += rows
        if time.monotonic() - self._flushed_at >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Hand the rows tallied since the last flush to Ray's counter."""
        rows, self._rows, self._flushed_at = self._rows, Tally(), time.monotonic()
        for (model, version), count in rows.items():
            self._predictions.inc(count, tags={"model": model, "version": str(version)})

    def captured(self, model: str, rows: int) -> None:
        self._captured.inc(rows, tags={"model": model})

    def dropped(self, model: str, reason: str, rows: int) -> None:
        self._dropped.inc(rows, tags={"model": model, "reason": reason})

    def outcomes(self, model: str, stored: int, unknown: int) -> None:
        for known, count in (("true", stored - unknown), ("false", unknown)):
            if count:
                self._outcomes.inc(count, tags={"model": model, "known": known})

    def live_quality(self, model: str, lines: list[VersionQuality]) -> None:
        """The live quality just measured (serve_app/capture/live.py), kept to be said again."""
        self._live = (model, lines)
        for line in lines:
            tags = {"model": model, "version": str(line.version), "role": line.role}
            for metric, value in line.metrics.items():
                self._quality.set(value, tags={**tags, "metric": metric})
            self._quality_rows.set(line.captured, tags={**tags, "kind": "captured"})
            self._quality_rows.set(line.labelled, tags={**tags, "kind": "labelled"})
            if line.with_probabilities is not None:
                self._quality_rows.set(line.with_probabilities, tags={**tags, "kind": "with_probabilities"})

    def refused(self, model: str, reason: str) -> None:
        self._errors.inc(tags={"model": model, "reason": reason})

    def batched(self, model: str, size: int) -> None:
        """A call of the batched path (serve.batch); the inline fast path is not one."""
        self._batch.observe(size, tags={"model": model})

    def observe(self, status: ReplicaStatus) -> None:
        """Follow a new status: swaps, refusals, and what is held now."""
        held = {(v.model, str(v.version), v.role.value): v for v in status.versions}
        for gone in self._serving - held.keys():
            self._served.set(0, tags=dict(zip(("model", "version", "role"), gone, strict=True)))
        for key in held.keys() - self._serving:
            self._swap.observe(held[key].load_seconds, tags={"model": key[0]})
        self._serving = set(held)
        if self._model is not None and self._model != status.model:
            self._ready.set(0, tags={"model": self._model})
        self._model = status.model
        failure = status.last_error
        if failure is not None and failure != self._last_failure and status.model is not None:
            self._load_failures.inc(tags={"model": status.model, "reason": failure.reason})
        self._last_failure = failure
        self.refresh(status)

    def refresh(self, status: ReplicaStatus) -> None:
        """Ray exports a gauge only for a while after it was set: keep saying what is held.
        Called on the heartbeat, it also flushes rows tallied before traffic stopped."""
        self.flush()
        for model, version, role in self._serving:
            self._served.set(1, tags={"model": model, "version": version, "role": role})
        if status.model is not None:
            self._ready.set(1 if status.ready else 0, tags={"model": status.model})
        if status.models:
            self._many(status)
        if self._live is not None:
            self.live_quality(*self._live)

    def _many(self, status: ReplicaStatus) -> None:
        """What changed in the replica's many-models tallies since the last report."""
        hits = loads = evictions = 0
        for line in status.models:
            was = self._seen.get(line.model, (0, 0, 0))
            hits, loads, evictions = hits + line.hits - was[0], loads + line.loads - was[1], evictions + line.evictions - was[2]
            if line.loads > was[1] and line.load_seconds is not None:
                self._cold.observe(line.load_seconds)
            self._seen[line.model] = (line.hits, line.loads, line.evictions)
        for outcome, count in (("hit", hits), ("load", loads)):
            if count:
                self._cache.inc(count, tags={"outcome": outcome})
        if evictions:
            self._evictions.inc(evictions)
        held = [line for line in status.models if line.held]
        self._held_models.set(len(held))
        self._held_bytes.set(sum(line.held_bytes for line in held))
