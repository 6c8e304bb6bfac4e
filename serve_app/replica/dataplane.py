"""The transport-free data plane: which version answers, its answer, and what it is.

It knows no JSON, no HTTP and no protobuf. A request goes in two steps, so that decoding
can be checked against the exact version that will answer:

    binding = plane.bind(model, version)        # reads the served state once
    matrix = <decode the body against binding.features>
    result = await plane.infer(binding, matrix)  # InferenceResult

A swap in the middle of a request cannot mix two versions, and a request for one model
is never answered by another's estimator: `bind` only ever returns a version of the
model named in the request. What a request asks for is a set of `Output`s
(serve_app/replica/batching.py).

The Open Inference Protocol's work that does not depend on the transport is here too,
so that its REST routes and its gRPC servicer give the same answers: reading a version
a request names as text, describing a model, and the outputs asked for by name.

Prediction can go through an injected batching `Predictor`, so the deployment batches
concurrent requests (`serve.batch` with no wait: what queued while the previous batch
ran) without this module knowing about Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nonstop.errors import InvalidInput, ModelNotReady, NonstopError, UnknownModel, VersionNotFound, clip
from nonstop.loading import LoadedModel
from nonstop.manifest import FeatureSpec
from serve_app.replica.batching import PREDICTIONS_ONLY, Job, Output, Outputs, Predictor, run_batch, settled
from serve_app.replica.state import ModelMetadata, Role, ServingState
from serve_app.rollout.canary import Assignment
from serve_app.wire.v2_tensors import PREDICT, PREDICT_PROBA, OutputTensor, datatype_of, prediction_tensor

SERVER_NAME = "nonstop"
EXTENSIONS = ["binary_tensor_data"]
# Versions are the registry's counters: a longer number names none, and int() of a few
# thousand digits would be refused by Python itself.
MAX_VERSION_DIGITS = 18




class StateSource(Protocol):
    @property
    def state(self) -> ServingState: ...


@runtime_checkable
class ModelSource(Protocol):
    """Many models, each with its own state (serve_app/replica/models.py `ModelSet`):
    `state_of` raises UnknownModel for a name not served; `loaded` awaits the model's
    load on this replica, within a bound (ModelLoadPending past it)."""

    def served_models(self) -> list[str]: ...
    def state_of(self, model: str) -> ServingState: ...
    async def loaded(self, model: str) -> None: ...


class OneModel:
    """One state source as a `ModelSource`: the model its state targets, always loaded
    by the holder before any request (or not ready, saying why)."""

    def __init__(self, source: StateSource) -> None:
        self._source = source

    def served_models(self) -> list[str]:
        model = self._source.state.model
        return [model] if model else []

    def state_of(self, model: str) -> ServingState:
        state = self._source.state
        if model != state.model:
            raise UnknownModel(f"unknown model {clip(model)!r}; this server serves {state.model!r}")
        return state

    async def loaded(self, model: str) -> None:
        pass


class Rollout(Protocol):
    """What the data plane asks of the rollouts (serve_app/rollout/canary.py `Canary`, or
    one per model behind serve_app/replica/models.py `Canaries`)."""

    def assign(self, state: ServingState, key: str | None) -> Assignment | None: ...
    def answered(
        self, assignment: Assignment, matrix: np.ndarray, predictions: list[Any], seconds: float,
        scored: Callable[[LoadedModel, list[Any]], None] | None = None,
    ) -> None: ...  # fmt: skip
    def failed(self, loaded: LoadedModel, seconds: float) -> None: ...


class Observer(Protocol):
    """Told of every outcome; the deployment plugs metrics in here."""

    def predicted(self, model: str, version: int, rows: int) -> None: ...
    def refused(self, model: str, reason: str) -> None: ...


class Capture(Protocol):
    """Given every answered request (serve_app/capture/recorder.py); returns at once."""

    def served(
        self,
        request_id: str,
        model: str,
        version: int,
        role: str,
        features: list[FeatureSpec],
        matrix: np.ndarray,
        predictions: list[Any],
        probabilities: list[list[float]] | None,
    ) -> None: ...


SHADOW = "shadow"  # the role of a prediction made off the path, to compare with the answer


def _shadow(capture: Capture | None, request_id: str, model: str, matrix: np.ndarray) -> Callable[[LoadedModel, list[Any]], None] | None:
    """What captures a rollout's off-path prediction of this request, under the same id."""
    if capture is None:
        return None

    def scored(loaded: LoadedModel, predictions: list[Any]) -> None:
        capture.served(request_id, model, loaded.version, SHADOW, loaded.manifest.features, matrix, predictions, None)

    return scored


class _Unobserved:
    def predicted(self, model: str, version: int, rows: int) -> None:
        pass

    def refused(self, model: str, reason: str) -> None:
        pass


OTHER_MODEL = "other"  # refusals for names not served are counted under one label


def server_version() -> str:
    try:
        return package_version("nonstop")
    except PackageNotFoundError:
        return "unknown"


def parse_version(model: str, version: str) -> int:
    """A version a request names as text (a path segment, a gRPC field), read only when
    canonical: ASCII decimal digits ('²' is a digit to str.isdigit, not to int()), no sign,
    no leading zero (`01` names no version, rather than another spelling of 1), and
    bounded before int() reads it. Every protocol reads versions here."""
    if not (version.isascii() and version.isdigit()) or version[0] == "0" or len(version) > MAX_VERSION_DIGITS:
        raise VersionNotFound(
            f"model {clip(model)!r} version {clip(version)!r} is not served here: a version is its number, "
            f"1 to {MAX_VERSION_DIGITS} digits with no sign or leading zero"
        )
    return int(version)


def model_outputs(loaded: LoadedModel) -> list[dict[str, Any]]:
    """The prediction, and class probabilities from a classifier that gives them."""
    classes = loaded.manifest.classes
    outputs = [{"name": PREDICT, "datatype": datatype_of(classes) if classes else "FP64", "shape": [-1]}]
    if loaded.manifest.task == "classification" and hasattr(loaded.estimator, "predict_proba"):
        outputs.append({"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, len(classes)]})
    return outputs


@dataclass(frozen=True)
class Binding:
    """The version that will answer one request, chosen once."""

    model: str
    loaded: LoadedModel
    assignment: Assignment | None = None  # set while a rollout runs: see serve_app/rollout/canary.py
    role: Role = Role.PRIMARY  # the role of the version asked for by number

    @property
    def version(self) -> int:
        return self.loaded.version

    @property
    def features(self) -> list[FeatureSpec]:
        return self.loaded.manifest.features


@dataclass(frozen=True)
class InferenceResult:
    model: str
    version: int
    outputs: Outputs

    @property
    def predictions(self) -> list[Any]:
        return self.outputs[Output.PREDICTIONS]


class DataPlane:
    def __init__(
        self,
        source: StateSource | ModelSource,
        batched: Predictor | None = None,
        observer: Observer | None = None,
        canary: Rollout | None = None,
        capture: Capture | None = None,
    ) -> None:
        self._models = source if isinstance(source, ModelSource) else OneModel(source)
        self._capture = capture
        self._batched = batched
        self._observer = observer or _Unobserved()
        self._canary = canary

    def served_models(self) -> list[str]:
        return self._models.served_models()

    def is_served(self, model: str) -> bool:
        try:
            self._models.state_of(model)
        except UnknownModel:
            return False
        return True

    def _state_for(self, model: str) -> ServingState:
        return self._models.state_of(model)

    def check_ready(self) -> None:
        """Raises ModelNotReady while this replica cannot take requests: no model configured,
        or a single model with no version loaded. Many models load on their first request,
        so a replica serving them is ready once configured."""
        models = self.served_models()
        if not models:
            raise ModelNotReady("no model is configured yet")
        if isinstance(self._models, OneModel):
            for model in models:
                self.bind(model)  # not ready while the served model has no version loaded

    async def bind_loaded(self, model: str, version: str | None = None, key: str | None = None) -> Binding:
        """`bind_requested`, once the model is loaded on this replica: a model served but
        not held here (evicted, or never asked for) loads first, within a bounded wait."""
        await self._models.loaded(model)
        return self.bind_requested(model, version, key)

    def bind_requested(self, model: str, version: str | None, key: str | None = None) -> Binding:
        """`bind`, for a version named as text; None or empty names none (the primary,
        or a canary's candidate for its share)."""
        return self.bind(model, parse_version(model, version) if version else None, key)

    def bind(self, model: str, version: int | None = None, key: str | None = None) -> Binding:
        """The primary version of `model` (or, while a rollout runs, the candidate for its
        share of requests; `key` makes the choice sticky), or the loaded `version` asked for."""
        state = self._state_for(model)
        if version is not None:
            held = next((v for v in state.versions if v.loaded.version == version), None)
            if held is None:
                serving = state.primary.version if state.primary else None
                raise VersionNotFound(f"model {model!r} version {version} is not served here (serving: {serving})")
            return Binding(model, held.loaded, role=held.role)
        primary = state.held(Role.PRIMARY)
        if primary is None:
            why = f": {state.last_error.message}" if state.last_error else ""
            raise ModelNotReady(f"model {model!r} has no version loaded yet{why}")
        assignment = self._canary.assign(state, key) if self._canary is not None else None
        return Binding(model, assignment.answer if assignment else primary, assignment)

    async def infer(
        self, binding: Binding, matrix: np.ndarray, outputs: frozenset[Output] = PREDICTIONS_ONLY, request_id: str | None = None
    ) -> InferenceResult:
        """The bound version's answer. A candidate that cannot answer (it raises, or lacks
        an output asked for) costs the client nothing: the primary answers instead, and
        the failure is tallied against the candidate alone. `request_id`: the id the
        transport answers with; a request with one is captured (when capture is on), with
        the role of the version that answered."""
        started = time.perf_counter()
        assignment = binding.assignment
        try:
            results = await self._answer(binding.loaded, matrix, outputs)
        except Exception:
            if assignment is None or self._canary is None or not assignment.by_candidate or assignment.compare is None:
                raise
            self._canary.failed(assignment.answer, time.perf_counter() - started)
            binding, assignment = Binding(binding.model, assignment.compare), None
            results = await self._answer(binding.loaded, matrix, outputs)
        capture = self._capture if request_id is not None else None
        if assignment is not None and self._canary is not None:
            shadow = _shadow(capture, request_id or "", binding.model, matrix)
            self._canary.answered(assignment, matrix, results.get(Output.PREDICTIONS, []), time.perf_counter() - started, shadow)
        self._observer.predicted(binding.model, binding.version, len(matrix))
        if capture is not None and request_id is not None:
            role = Role.CANDIDATE if assignment is not None and assignment.by_candidate else binding.role
            capture.served(
                request_id, binding.model, binding.version, role.value, binding.features, matrix,
                results.get(Output.PREDICTIONS, []), results.get(Output.PROBABILITIES),
            )  # fmt: skip
        return InferenceResult(model=binding.model, version=binding.version, outputs=results)

    async def _answer(self, loaded: LoadedModel, matrix: np.ndarray, outputs: frozenset[Output]) -> Outputs:
        if Output.PROBABILITIES in outputs:
            loaded.require_probabilities()  # refused alone, never inside a shared batch
        return await self._run(Job(loaded, matrix, outputs))

    async def infer_outputs(
        self, binding: Binding, matrix: np.ndarray, names: list[str], request_id: str | None = None
    ) -> tuple[InferenceResult, list[OutputTensor]]:
        """The outputs asked for by name, in that order, from the bound version."""
        available = [o["name"] for o in model_outputs(binding.loaded)]
        unknown = [name for name in names if name not in available]
        if unknown:
            raise InvalidInput(
                f"model {binding.model!r} v{binding.version} has no output(s) {', '.join(clip(u) for u in unknown)}; "
                f"it has: {', '.join(available)}"
            )
        kinds = {Output.PREDICTIONS} | ({Output.PROBABILITIES} if PREDICT_PROBA in names else set())
        result = await self.infer(binding, matrix, frozenset(kinds), request_id)
        tensors = {PREDICT: prediction_tensor(result.predictions)}
        if PREDICT_PROBA in names:
            probabilities = np.asarray(result.outputs[Output.PROBABILITIES], dtype=np.float64)
            tensors[PREDICT_PROBA] = OutputTensor(PREDICT_PROBA, "FP64", list(probabilities.shape), probabilities.ravel())
        return result, [tensors[name] for name in names]

    async def _run(self, job: Job) -> Outputs:
        return settled(run_batch([job])[0]) if self._batched is None else await self._batched(job)

    def refused(self, model: str, exc: NonstopError) -> None:
        """Count a refused request by the error's reason code; a model name the client
        made up is not a label (that would let clients grow the metrics without bound)."""
        self._observer.refused(model if self.is_served(model) else OTHER_MODEL, exc.reason)

    def metadata(self, model: str) -> ModelMetadata:
        return self._state_for(model).metadata()

    def describe(self, binding: Binding) -> dict[str, Any]:
        """The bound version as the Open Inference Protocol describes a model."""
        return {
            "name": binding.model,
            "versions": [str(binding.version)],
            "platform": "scikit-learn",
            "inputs": [
                {"name": f.name, "datatype": "FP64" if f.kind == "number" else "BYTES", "shape": [-1]} for f in binding.features
            ],
            "outputs": model_outputs(binding.loaded),
        }
