"""Prometheus metrics of a replica, exported through Ray's metrics endpoint.

Ray prefixes them with `ray_` and Serve adds `deployment`, `replica` and `application`
tags, so every series below can be told apart by replica without our help. The Grafana
dashboard in docs/grafana is built on exactly these names.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.holder import LoadFailure

_SWAP_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
_BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class ServingMetrics:
    """Implements the data plane's `Observer` and follows the holder's changes."""

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
            "nonstop_served_version", description="1 for the version this replica serves", tag_keys=("model", "version")
        )
        self._batch = Histogram(
            "nonstop_batch_size", description="Requests predicted together", boundaries=_BATCH_BUCKETS, tag_keys=("model",)
        )
        self._serving: tuple[str, str] | None = None
        self._last_failure: LoadFailure | None = None

    def predicted(self, model: str, version: int, rows: int) -> None:
        self._predictions.inc(rows, tags={"model": model, "version": str(version)})

    def refused(self, model: str, reason: str) -> None:
        self._errors.inc(tags={"model": model, "reason": reason})

    def batched(self, model: str, size: int) -> None:
        self._batch.observe(size, tags={"model": model})

    def swapped(self, model: str, version: int, seconds: float) -> None:
        if self._serving == (model, str(version)):
            return
        if self._serving is not None:
            self._served.set(0, tags={"model": self._serving[0], "version": self._serving[1]})
        self._serving = (model, str(version))
        self._served.set(1, tags={"model": model, "version": str(version)})
        self._swap.observe(seconds, tags={"model": model})

    def refresh(self) -> None:
        """Ray exports a gauge only for a while after it was set: keep saying what is served."""
        if self._serving is not None:
            self._served.set(1, tags={"model": self._serving[0], "version": self._serving[1]})

    def load_failed(self, model: str, failure: LoadFailure) -> None:
        if failure is self._last_failure:
            return
        self._last_failure = failure
        self._load_failures.inc(tags={"model": model, "reason": failure.reason})
