"""Thin HTTP routes (KServe V1 shape) over the data plane, and the one error table.

Errors carry no status codes: `HTTP_STATUS` below is the only place that maps an error
type to an HTTP status, for these routes and any other mounted on the same app.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from nonstop.errors import (
    AliasNotFound,
    ConfigError,
    DataValidationError,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    NonstopError,
    PayloadTooLarge,
    UnknownModel,
    VersionNotFound,
    clip,
)
from serve_app.rest import v1_openapi as openapi
from serve_app.rest.body import BodyTimeout, read_body
from serve_app.rollout.canary import KEY_HEADER
from serve_app.config import Limits
from serve_app.replica.dataplane import PREDICTIONS_ONLY, DataPlane, InferenceResult, Output
from serve_app.wire.v1_json import body_matrix
from serve_app.rest.front import Front, HotRoute
from serve_app.rest.v1_openapi import MODEL_HEADER, VERSION_HEADER

MAX_ERROR_CHARS = 600

HTTP_STATUS: dict[type[NonstopError], int] = {
    UnknownModel: 404,
    ModelNotFound: 404,
    VersionNotFound: 404,
    AliasNotFound: 404,
    BodyTimeout: 408,
    PayloadTooLarge: 413,
    InvalidInput: 422,
    DataValidationError: 422,
    ConfigError: 422,
    ModelNotReady: 503,
    ModelLoadError: 503,
}


def http_status(exc: NonstopError) -> int:
    """The status of the nearest listed ancestor of the error's type; 500 if none is."""
    return next((HTTP_STATUS[k] for k in type(exc).__mro__ if k in HTTP_STATUS), 500)


def plane_of(request: Request) -> DataPlane:
    return request.app.state.plane


def requested_outputs(request: Request) -> frozenset[Output]:
    """`?probabilities=true` adds a classifier's probabilities; without it the answer is
    KServe V1's, unchanged."""
    if not request.scope["query_string"]:  # the usual case, without parsing an empty query
        return PREDICTIONS_ONLY
    flag = request.query_params.get("probabilities")
    if flag is None or flag.lower() in _NO:
        return PREDICTIONS_ONLY
    if flag.lower() in _YES:
        return PREDICTIONS_ONLY | {Output.PROBABILITIES}
    raise InvalidInput(f"query parameter 'probabilities' must be true or false, not {clip(flag)!r}")


_YES, _NO = frozenset({"true", "1"}), frozenset({"false", "0"})


def limits_of(request: Request) -> Limits:
    return request.app.state.limits


def json_response(content: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """ASCII-escaped JSON: renders whatever text an error quotes, lone surrogates included."""
    return Response(json.dumps(content), status_code=status_code, media_type="application/json", headers=headers)


def answer_headers(result: InferenceResult) -> dict[str, str]:
    """Which model and version answered, taken from the version that did."""
    return {MODEL_HEADER: result.model, VERSION_HEADER: str(result.version)}


async def _render_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, NonstopError):  # registered for NonstopError only
        raise exc
    model = request.path_params.get("model")
    if model is not None:
        plane_of(request).refused(model, exc)
    # bounded, and ASCII-escaped by json.dumps: any client text renders, lone surrogates included
    return json_response({"error": clip(exc.message, MAX_ERROR_CHARS)}, status_code=http_status(exc))


async def _render_http_error(_: Request, exc: Exception) -> Response:
    """Routing's own refusals (no such path, wrong method) in the one error shape."""
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    return json_response({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def predict(request: Request, model: str) -> Response:
    """KServe V1's predict: JSON instances, or an Arrow stream of columns."""
    plane, limits = plane_of(request), limits_of(request)
    binding = plane.bind(model, key=request.headers.get(KEY_HEADER))
    body = await read_body(request, limits)
    matrix = body_matrix(body, request.headers.get("content-type"), binding.features, limits)
    asked = requested_outputs(request)
    result = await plane.infer(binding, matrix, asked)
    content: dict[str, Any] = {"predictions": result.predictions, "model_version": str(result.version)}
    if Output.PROBABILITIES in asked:
        content["probabilities"] = result.outputs[Output.PROBABILITIES]
        content["classes"] = binding.loaded.manifest.classes
    return json_response(content, headers=answer_headers(result))


PREDICT_PATH = "/v1/models/{model}:predict"


def create_api(plane: DataPlane, limits: Limits) -> Front:
    """The ASGI app over one replica's data plane: FastAPI, behind the front that answers
    the prediction routes itself (serve_app/rest/front.py)."""
    api = FastAPI(title="nonstop", summary="Predictions from the registry's current model version")
    api.state.plane = plane
    api.state.limits = limits
    api.add_exception_handler(NonstopError, _render_error)
    api.add_exception_handler(HTTPException, _render_http_error)

    @api.post(PREDICT_PATH, **openapi.PREDICT)
    async def predict_route(model: str, request: Request) -> Response:
        return await predict(request, model)

    @api.get("/v1/models/{model}", **openapi.METADATA)
    async def model_metadata(model: str) -> Response:
        return Response(plane.metadata(model).model_dump_json(), media_type="application/json")

    @api.get("/v1/models", **openapi.LISTING)
    async def list_models() -> Response:
        return json_response({"models": plane.served_models()})

    from serve_app.rest.v2_routes import HOT_ROUTES, create_router  # it uses this module's helpers: imported once both exist

    api.include_router(create_router())
    return Front(api, [HotRoute(PREDICT_PATH, predict), *HOT_ROUTES], _render_error, NonstopError)
