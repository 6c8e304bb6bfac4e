"""`POST /v1/models/{model}/outcomes`: labels for requests served earlier, by request id.

The labels are checked against the task of the version serving now (its classes, or a
number for a regression) and stored beside the captures (serve_app/capture/outcomes.py);
the answer says how many were stored and which ids no captured record has yet.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from nonstop.errors import ConfigError
from nonstop.outcomes import OutcomeBatch, OutcomeReport
from serve_app.capture.outcomes import OutcomeSink
from serve_app.rest.body import read_body
from serve_app.rest.common import limits_of, plane_of
from serve_app.rest.v1_openapi import error_responses

OUTCOMES_PATH = "/v1/models/{model}/outcomes"
SPEC = {
    "response_model": None,
    "responses": {200: {"model": OutcomeReport}, **error_responses(404, 413, 422, 503)},
    "openapi_extra": {
        "requestBody": {"required": True, "content": {"application/json": {"schema": OutcomeBatch.model_json_schema()}}}
    },
}


def create_router() -> APIRouter:
    router = APIRouter()

    @router.post(OUTCOMES_PATH, **SPEC)
    async def post_outcomes(model: str, request: Request) -> Response:
        sink: OutcomeSink | None = request.app.state.outcomes
        binding = plane_of(request).bind(model)
        if sink is None:
            raise ConfigError("this server stores no outcomes: it was built without a capture store")
        body = await read_body(request, limits_of(request))
        report = await sink.post(binding.loaded.manifest, body)
        return Response(report.model_dump_json(), media_type="application/json")

    return router
