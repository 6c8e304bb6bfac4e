"""Open Inference Protocol (V2) REST routes, and KServe's V1 server liveness at `/`.

The same data plane answers V1 and V2: a V2 request is bound to a version, decoded
(serve_app.wire.v2_tensors) against that version's schema into the matrix a V1 request becomes,
and predicted by the same batched call, so a swap between the check and the prediction
cannot answer from a version the client did not ask for. The versioned forms answer only
for a version this replica holds at that moment (404 otherwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from nonstop.errors import InvalidInput, ModelNotReady, VersionNotFound, clip
from nonstop.loading import LoadedModel
from serve_app.rest import v2_openapi as spec
from serve_app.replica.dataplane import Binding, DataPlane, InferenceResult, Output
from serve_app.rest.v1_openapi import MODEL_HEADER, VERSION_HEADER
from serve_app.rest.body import read_body
from serve_app.rollout.canary import KEY_HEADER
from serve_app.rest.front import HotRoute
from serve_app.rest.v1_routes import answer_headers, json_response, limits_of, plane_of
from serve_app.wire.v2_tensors import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    PREDICT,
    PREDICT_PROBA,
    OutputTensor,
    datatype_of,
    decode,
    encode,
    prediction_tensor,
)

SERVER_NAME = "nonstop"
EXTENSIONS = ["binary_tensor_data"]


def _binding(request: Request, model: str, version: str | None, key: str | None = None) -> Binding:
    """The version this request runs on: the primary (or, during a canary, the candidate
    for its share; `key` keeps a client's choice sticky), or the one the path names if held."""
    plane = plane_of(request)
    if version is None:
        return plane.bind(model, key=key)
    if not (version.isascii() and version.isdigit()):  # '²' is a digit to str.isdigit, not to int()
        raise VersionNotFound(f"model {clip(model)!r} version {clip(version)!r} is not served here")
    return plane.bind(model, int(version))


def model_outputs(loaded: LoadedModel) -> list[dict[str, Any]]:
    """The prediction, and class probabilities from a classifier that gives them."""
    classes = loaded.manifest.classes
    outputs = [{"name": PREDICT, "datatype": datatype_of(classes) if classes else "FP64", "shape": [-1]}]
    if loaded.manifest.task == "classification" and hasattr(loaded.estimator, "predict_proba"):
        outputs.append({"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, len(classes)]})
    return outputs


def describe_model(binding: Binding) -> dict[str, Any]:
    return {
        "name": binding.model,
        "versions": [str(binding.version)],
        "platform": "scikit-learn",
        "inputs": [
            {"name": f.name, "datatype": "FP64" if f.kind == "number" else "BYTES", "shape": [-1]} for f in binding.features
        ],
        "outputs": model_outputs(binding.loaded),
    }


async def infer_outputs(
    plane: DataPlane, binding: Binding, matrix: np.ndarray, names: list[str]
) -> tuple[InferenceResult, list[OutputTensor]]:
    """The outputs asked for by name, in that order, from the bound version (REST and gRPC)."""
    available = [o["name"] for o in model_outputs(binding.loaded)]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise InvalidInput(
            f"model {binding.model!r} v{binding.version} has no output(s) {', '.join(clip(u) for u in unknown)}; "
            f"it has: {', '.join(available)}"
        )
    kinds = {Output.PREDICTIONS} | ({Output.PROBABILITIES} if PREDICT_PROBA in names else set())
    result = await plane.infer(binding, matrix, frozenset(kinds))
    tensors = {PREDICT: prediction_tensor(result.predictions)}
    if PREDICT_PROBA in names:
        probabilities = np.asarray(result.outputs[Output.PROBABILITIES], dtype=np.float64)
        tensors[PREDICT_PROBA] = OutputTensor(PREDICT_PROBA, "FP64", list(probabilities.shape), probabilities.ravel())
    return result, [tensors[name] for name in names]


def _ready(binding: Binding) -> Response:
    headers = {MODEL_HEADER: binding.model, VERSION_HEADER: str(binding.version)}
    return json_response({"name": binding.model, "ready": True}, headers=headers)


async def infer(request: Request, model: str, version: str | None = None) -> Response:
    binding = _binding(request, model, version, key=request.headers.get(KEY_HEADER))
    limits = limits_of(request)
    body = await read_body(request, limits)
    decoded = decode(body, request.headers.get(HEADER_LENGTH), model, binding.features, limits)
    result, answer = await infer_outputs(plane_of(request), binding, decoded.matrix, list(decoded.outputs))
    content, header_length = encode(model, result.version, decoded.request_id, answer, decoded.outputs)
    headers = answer_headers(result)
    if header_length is None:
        return Response(content, media_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(header_length)
    return Response(content, media_type=BINARY_CONTENT_TYPE, headers=headers)


INFER_PATH = "/v2/models/{model}/infer"
VERSION_INFER_PATH = "/v2/models/{model}/versions/{version}/infer"
HOT_ROUTES = [HotRoute(INFER_PATH, infer), HotRoute(VERSION_INFER_PATH, infer)]


def create_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", **spec.SERVER_LIVE_V1)
    async def v1_live() -> Response:
        """KServe's model server answers its root as its liveness probe."""
        return json_response({"status": "alive"})

    @router.get("/v2", **spec.SERVER_METADATA)
    async def server_metadata() -> Response:
        return json_response({"name": SERVER_NAME, "version": spec.package_version(), "extensions": EXTENSIONS})

    @router.get("/v2/health/live", **spec.LIVE)
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/v2/health/ready", **spec.READY)
    async def ready(request: Request) -> Response:
        plane = plane_of(request)
        models = plane.served_models()
        if not models:
            raise ModelNotReady("no model is configured yet")
        for model in models:
            plane.bind(model)  # not ready while any served model has no version loaded
        return json_response({"ready": True})

    @router.get("/v2/models/{model}", **spec.MODEL_METADATA)
    async def model_metadata(model: str, request: Request) -> Response:
        return json_response(describe_model(_binding(request, model, None)))

    @router.get("/v2/models/{model}/versions/{version}", **spec.MODEL_METADATA)
    async def version_metadata(model: str, version: str, request: Request) -> Response:
        return json_response(describe_model(_binding(request, model, version)))

    @router.get("/v2/models/{model}/ready", **spec.MODEL_READY)
    async def model_ready(model: str, request: Request) -> Response:
        return _ready(_binding(request, model, None))

    @router.get("/v2/models/{model}/versions/{version}/ready", **spec.MODEL_READY)
    async def version_ready(model: str, version: str, request: Request) -> Response:
        return _ready(_binding(request, model, version))

    @router.post(INFER_PATH, **spec.INFER)
    async def infer_route(model: str, request: Request) -> Response:
        return await infer(request, model)

    @router.post(VERSION_INFER_PATH, **spec.INFER)
    async def version_infer_route(model: str, version: str, request: Request) -> Response:
        return await infer(request, model, version)

    return router
