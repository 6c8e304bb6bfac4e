"""KServe V1 routes: predict (JSON instances or an Arrow stream), a model's metadata, the list.

Thin over the data plane: bind the request to one version, decode the body against that
version's features (serve_app/wire), predict, answer in V1's shape. `?probabilities=true`
adds a classifier's probabilities and their classes; without it the answer is V1's,
unchanged.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from nonstop.errors import InvalidInput, clip
from serve_app.edge import KEY_HEADER, REQUEST_ID_HEADER, request_id
from serve_app.replica.batching import PREDICTIONS_ONLY, Output
from serve_app.rest import v1_openapi as spec
from serve_app.rest.body import read_body
from serve_app.rest.common import answer_headers, json_response, limits_of, plane_of
from serve_app.rest.front import HotRoute
from serve_app.wire.v1_json import body_matrix

_YES, _NO = frozenset({"true", "1"}), frozenset({"false", "0"})


def requested_outputs(request: Request) -> frozenset[Output]:
    if not request.scope["query_string"]:  # the usual case, without parsing an empty query
        return PREDICTIONS_ONLY
    flag = request.query_params.get("probabilities")
    if flag is None or flag.lower() in _NO:
        return PREDICTIONS_ONLY
    if flag.lower() in _YES:
        return PREDICTIONS_ONLY | {Output.PROBABILITIES}
    raise InvalidInput(f"query parameter 'probabilities' must be true or false, not {clip(flag)!r}")


async def predict(request: Request, model: str) -> Response:
    """KServe V1's predict: JSON instances, or an Arrow stream of columns."""
    plane, limits = plane_of(request), limits_of(request)
    rid = request_id(request.headers.get(REQUEST_ID_HEADER))
    binding = await plane.bind_loaded(model, key=request.headers.get(KEY_HEADER))
    body = await read_body(request, limits)
    matrix = body_matrix(body, request.headers.get("content-type"), binding.features, limits)
    asked = requested_outputs(request)
    result = await plane.infer(binding, matrix, asked, rid)
    content: dict[str, Any] = {"predictions": result.predictions, "model_version": str(result.version)}
    if Output.PROBABILITIES in asked:
        content["probabilities"] = result.outputs[Output.PROBABILITIES]
        content["classes"] = binding.loaded.manifest.classes
    return json_response(content, headers=answer_headers(result, rid, request))


PREDICT_PATH = "/v1/models/{model}:predict"
HOT_ROUTES = [HotRoute(PREDICT_PATH, predict)]


def create_router() -> APIRouter:
    router = APIRouter()

    @router.post(PREDICT_PATH, **spec.PREDICT)
    async def predict_route(model: str, request: Request) -> Response:
        return await predict(request, model)

    @router.get("/v1/models/{model}", **spec.METADATA)
    async def model_metadata(model: str, request: Request) -> Response:
        return Response(plane_of(request).metadata(model).model_dump_json(), media_type="application/json")

    @router.get("/v1/models", **spec.LISTING)
    async def list_models(request: Request) -> Response:
        return json_response({"models": plane_of(request).served_models()})

    return router
