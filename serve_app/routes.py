"""Thin HTTP routes (KServe V1 shape) over the data plane, and the error renderers."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from nonstop.errors import NonstopError, clip
from serve_app import openapi
from serve_app.body import read_body
from serve_app.dataplane import DataPlane
from serve_app.openapi import VERSION_HEADER


MAX_ERROR_CHARS = 600


def _plane(request: Request) -> DataPlane:
    return request.app.state.plane


def _json(content: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(content), status_code=status_code, media_type="application/json", headers=headers)


async def _render_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, NonstopError)
    # bounded, and ASCII-escaped by json.dumps: any client text renders, lone surrogates included
    return _json({"error": clip(exc.message, MAX_ERROR_CHARS)}, status_code=exc.status_code)


async def _render_http_error(_: Request, exc: Exception) -> JSONResponse:
    """Routing's own refusals (no such path, wrong method) in the one error shape."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def create_api() -> FastAPI:
    """The app object; whoever hosts it sets `app.state.plane` before traffic arrives."""
    api = FastAPI(title="nonstop", summary="Predictions from the registry's current model version")
    api.add_exception_handler(NonstopError, _render_error)
    api.add_exception_handler(HTTPException, _render_http_error)

    @api.post("/v1/models/{model}:predict", **openapi.PREDICT)
    async def predict(model: str, request: Request) -> Response:
        plane = _plane(request)
        result = await plane.infer(model, await read_body(request, plane.limits), request.headers.get("content-type"))
        return _json(result.body(), headers={VERSION_HEADER: str(result.version)})

    @api.get("/v1/models/{model}", **openapi.METADATA)
    async def model_metadata(model: str, request: Request) -> Response:
        return _json(_plane(request).metadata(model))

    @api.get("/v1/models", **openapi.LISTING)
    async def list_models(request: Request) -> Response:
        served = _plane(request).served_model()
        return _json({"models": [served] if served else []})

    return api
