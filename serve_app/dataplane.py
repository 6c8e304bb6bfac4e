"""The transport-free data plane: ready, metadata, infer.

It takes bytes and returns plain data, raising typed errors; the HTTP layer only maps
those to responses. Every request reads the holder's model reference once, so a swap in
the middle of a request cannot mix two versions.

Validation has a fast path for well-formed input (one numpy conversion and a few
vectorized checks); anything irregular falls back to a row-by-row walk whose only job is
to name the first problem precisely. Prediction can go through an injected batching
`Predictor`, so the deployment batches concurrent requests (`serve.batch` with no wait:
what queued while the previous batch ran) without this module knowing about Ray.
"""

from __future__ import annotations

import json
import math
import operator
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nonstop.errors import InvalidInput, ModelNotReady, NonstopError, PayloadTooLarge, UnknownModel, clip
from nonstop.loading import LoadedModel
from nonstop.manifest import FeatureSpec
from nonstop.schema import rows_to_matrix
from serve_app.arrow_input import ARROW_STREAM, arrow_matrix, is_arrow
from serve_app.config import Limits
from serve_app.holder import ModelHolder


Predictor = Callable[[LoadedModel, np.ndarray], Awaitable[list[Any]]]


class Observer(Protocol):
    """Told of every outcome; the deployment plugs metrics in here."""

    def predicted(self, model: str, version: int, rows: int) -> None: ...
    def refused(self, model: str, reason: str) -> None: ...


class _Unobserved:
    def predicted(self, model: str, version: int, rows: int) -> None:
        pass

    def refused(self, model: str, reason: str) -> None:
        pass


def predict_batch(items: Sequence[tuple[LoadedModel, np.ndarray]]) -> list[list[Any]]:
    """One estimator call per model for many requests; during a swap a batch can hold two."""
    results: list[list[Any]] = [[] for _ in items]
    groups: dict[int, list[int]] = {}
    for index, (loaded, _) in enumerate(items):
        groups.setdefault(id(loaded), []).append(index)
    for indices in groups.values():
        loaded = items[indices[0]][0]
        matrices = [items[i][1] for i in indices]
        stacked = loaded.predict(np.concatenate(matrices) if len(matrices) > 1 else matrices[0])
        start = 0
        for i, matrix in zip(indices, matrices, strict=True):
            results[i] = stacked[start : start + len(matrix)]
            start += len(matrix)
    return results


@dataclass(frozen=True)
class Prediction:
    predictions: list[Any]
    version: int

    def body(self) -> dict[str, Any]:
        return {"predictions": self.predictions, "model_version": str(self.version)}


class DataPlane:
    def __init__(
        self,
        holder: ModelHolder,
        limits: Limits,
        batched: Predictor | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.holder = holder
        self.limits = limits
        self._batched = batched
        self._observer = observer or _Unobserved()

    def served_model(self) -> str | None:
        target = self.holder.target
        return target.model if target else None

    def _check_model(self, model: str) -> None:
        if model != self.served_model():
            raise UnknownModel(f"unknown model {model!r}; this server serves {self.served_model()!r}")

    def model_for(self, model: str) -> LoadedModel:
        self._check_model(model)
        current = self.holder.current
        if current is None:
            raise ModelNotReady(f"model {model!r} has no version loaded yet")
        return current

    def metadata(self, model: str) -> dict[str, Any]:
        self._check_model(model)
        current, error, target = self.holder.current, self.holder.last_error, self.holder.target
        manifest = current.manifest if current else None
        return {
            "name": model,
            "ready": current is not None,
            "version": str(manifest.version) if manifest else None,
            "target": target.describe() if target else None,
            "loaded_at": current.loaded_at.isoformat() if current else None,
            "load_seconds": current.load_seconds if current else None,
            "features": [f.model_dump() for f in manifest.features] if manifest else [],
            "classes": manifest.classes if manifest else [],
            "metrics": manifest.metrics if manifest else {},
            "created_at": manifest.created_at.isoformat() if manifest else None,
            "last_error": None
            if error is None
            else {"version": error.version, "reason": error.reason, "message": error.message, "at": error.at.isoformat()},
        }

    async def infer(self, model: str, body: bytes, content_type: str | None = None) -> Prediction:
        """`body` is JSON `{"instances": [...]}`, or an Arrow IPC stream when the content
        type says so; anything else is read as JSON, as clients that omit it expect."""
        try:
            prediction = await self._infer(model, body, content_type)
        except NonstopError as exc:
            self._observer.refused(model, type(exc).__name__)
            raise
        self._observer.predicted(model, prediction.version, len(prediction.predictions))
        return prediction

    async def _infer(self, model: str, body: bytes, content_type: str | None) -> Prediction:
        loaded = self.model_for(model)
        if len(body) > self.limits.max_body_bytes:
            raise PayloadTooLarge(f"request body of {len(body)} bytes exceeds the limit of {self.limits.max_body_bytes}")
        features = loaded.manifest.features
        if is_arrow(content_type):
            matrix = arrow_matrix(body, features, self.limits)
        else:
            instances = self._instances(body)
            matrix = self._fast_matrix(instances, features)
            if matrix is None:
                matrix = self.to_matrix(instances, features)
        if self._batched is None:
            predictions = loaded.predict(matrix)
        else:
            predictions = await self._batched(loaded, matrix)
        return Prediction(predictions=predictions, version=loaded.version)

    def _instances(self, body: bytes) -> list[Any]:
        try:
            payload = json.loads(body)
        except RecursionError as exc:
            raise InvalidInput("request body is nested too deeply") from exc
        except ValueError as exc:  # bad JSON or encoding, or an integer of over 4300 digits
            raise InvalidInput(
                f"request body is not valid JSON: {exc} (binary instances go as Content-Type: {ARROW_STREAM})"
            ) from exc
        if not isinstance(payload, dict) or "instances" not in payload:
            raise InvalidInput('request body must be a JSON object with an "instances" list')
        unknown = sorted(set(payload) - {"instances"})
        if unknown:
            raise InvalidInput(f"unknown request field(s): {', '.join(clip(u) for u in unknown)}")
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise InvalidInput('"instances" must be a list')
        if not instances:
            raise InvalidInput('"instances" is empty: send at least one instance')
        if len(instances) > self.limits.max_instances:
            raise PayloadTooLarge(f"{len(instances)} instances exceed the limit of {self.limits.max_instances} per request")
        return instances

    @staticmethod
    def _fast_matrix(instances: list[Any], features: list[FeatureSpec]) -> np.ndarray | None:
        """All-numeric schema, every instance the same shape, finite numbers only; else None."""
        if any(f.kind != "number" for f in features):
            return None
        width = len(features)
        first = instances[0]
        try:
            if isinstance(first, dict):
                pick = operator.itemgetter(*(f.name for f in features))
                if any(type(i) is not dict or len(i) != width for i in instances):
                    return None
                rows: list[Any] = [pick(i) for i in instances]
            else:
                rows = instances
            values = {type(v) for row in rows for v in row}
            if not values <= {float, int}:
                return None
            matrix = np.asarray(rows, dtype=np.float64)
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        if matrix.ndim != 2 or matrix.shape[1] != width or not np.isfinite(matrix).all():
            return None
        return matrix

    def to_matrix(self, instances: list[Any], features: list[FeatureSpec]) -> np.ndarray:
        """The slow path: walk every value and name the first problem."""
        names = [f.name for f in features]
        rows = []
        for index, instance in enumerate(instances):
            if isinstance(instance, dict):
                missing = [n for n in names if n not in instance]
                if missing:
                    raise InvalidInput(f"instance {index}: missing feature(s) {', '.join(missing)}")
                if len(instance) != len(names):
                    extra = sorted(set(instance) - set(names))
                    raise InvalidInput(f"instance {index}: unknown feature(s) {', '.join(clip(e) for e in extra)}")
                row = [instance[n] for n in names]
            elif isinstance(instance, list):
                if len(instance) != len(names):
                    raise InvalidInput(
                        f"instance {index}: expected {len(names)} values in schema order, got {len(instance)}"
                    )
                row = instance
            else:
                raise InvalidInput(f"instance {index}: must be an object keyed by feature name or a list of values")
            for spec, value in zip(features, row, strict=True):
                self._check_value(index, spec, value)
            rows.append(row)
        return rows_to_matrix(rows, features)

    def _check_value(self, index: int, spec: FeatureSpec, value: Any) -> None:
        if value is None:
            return  # documented: a missing value, imputed as in training
        if spec.kind == "number":
            if type(value) is float:
                if not math.isfinite(value):
                    raise InvalidInput(f"instance {index}, feature {spec.name!r}: {value} is not a finite number")
                return
            if type(value) is int:
                if abs(value) > sys.float_info.max:
                    raise InvalidInput(f"instance {index}, feature {spec.name!r}: {_short(value)} is too large for a float")
                return
            raise InvalidInput(
                f"instance {index}, feature {spec.name!r}: expected a number, got {type(value).__name__} {_short(value)}"
            )
        if not isinstance(value, str):
            raise InvalidInput(
                f"instance {index}, feature {spec.name!r}: expected a string, got {type(value).__name__} {_short(value)}"
            )
        if len(value) > self.limits.max_string_length:
            raise InvalidInput(
                f"instance {index}, feature {spec.name!r}: string longer than {self.limits.max_string_length} characters"
            )


def _short(value: Any) -> str:
    return clip(json.dumps(value))
