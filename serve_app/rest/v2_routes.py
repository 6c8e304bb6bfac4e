"""Open Inference Protocol (V2) REST routes, and KServe's V1 server liveness at `/`.

The same data plane answers V1 and V2: a V2 request is bound to a version, decoded
(serve_app.wire.v2_json) against that version's schema into the matrix a V1 request
becomes, and predicted by the same batched call, so a swap between the check and the
prediction cannot answer from a version the client did not ask for. The versioned forms
answer only for a version this replica holds at that moment (404 otherwise). What a
model is described as, which outputs it gives and how a version in the path is read are
the data plane's, shared with the gRPC transport.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve_app.edge import KEY_HEADER, REQUEST_ID_HEADER, request_id
from serve_app.replica.dataplane import EXTENSIONS, SERVER_NAME, Binding, server_version
from serve_app.rest import v2_openapi as spec
from serve_app.rest.body import read_body
from serve_app.rest.common import MODEL_HEADER, VERSION_HEADER, answer_headers, json_response, limits_of, plane_of
from serve_app.rest.front import HotRoute
from serve_app.wire.v2_json import BINARY_CONTENT_TYPE, HEADER_LENGTH, decode, encode


def _ready(binding: Binding) -> Response:
    headers = {MODEL_HEADER: binding.model, VERSION_HEADER: str(binding.version)}
    return json_response({"name": binding.model, "ready": True}, headers=headers)


async def infer(request: Request, model: str, version: str | None = None) -> Response:
    plane, limits = plane_of(request), limits_of(request)
    rid = request_id(request.headers.get(REQUEST_ID_HEADER))
    binding = await plane.bind_loaded(model, version, key=request.headers.get(KEY_HEADER))
    body = await read_body(request, limits)
    decoded = decode(body, request.headers.get(HEADER_LENGTH), model, binding.features, limits)
    result, answer = await plane.infer_outputs(binding, decoded.matrix, list(decoded.outputs), rid)
    content, header_length = encode(model, result.version, decoded.request_id, answer, decoded.outputs)
    headers = answer_headers(result, rid, request)
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
        return json_response({"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS})

    @router.get("/v2/health/live", **spec.LIVE)
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/v2/health/ready", **spec.READY)
    async def ready(request: Request) -> Response:
        plane_of(request).check_ready()
        return json_response({"ready": True})

    @router.get("/v2/models/{model}", **spec.MODEL_METADATA)
    async def model_metadata(model: str, request: Request) -> Response:
        plane = plane_of(request)
        return json_response(plane.describe(await plane.bind_loaded(model)))

    @router.get("/v2/models/{model}/versions/{version}", **spec.MODEL_METADATA)
    async def version_metadata(model: str, version: str, request: Request) -> Response:
        plane = plane_of(request)
        return json_response(plane.describe(await plane.bind_loaded(model, version)))

    @router.get("/v2/models/{model}/ready", **spec.MODEL_READY)
    async def model_ready(model: str, request: Request) -> Response:
        return _ready(plane_of(request).bind_requested(model, None))

    @router.get("/v2/models/{model}/versions/{version}/ready", **spec.MODEL_READY)
    async def version_ready(model: str, version: str, request: Request) -> Response:
        return _ready(plane_of(request).bind_requested(model, version))

    @router.post(INFER_PATH, **spec.INFER)
    async def infer_route(model: str, request: Request) -> Response:
        return await infer(request, model)

    @router.post(VERSION_INFER_PATH, **spec.INFER)
    async def version_infer_route(model: str, version: str, request: Request) -> Response:
        return await infer(request, model, version)

    return router
