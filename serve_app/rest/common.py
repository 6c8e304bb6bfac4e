"""What every REST route reads from its request and how it answers, shared by V1 and V2.

The app built by `serve_app.rest.api` carries this replica's data plane and limits in its
state; answers are JSON, and a prediction's headers name the model and version that
answered, taken from the version that did.
"""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import Response

from serve_app.edge import REQUEST_ID_HEADER
from serve_app.replica.dataplane import DataPlane, InferenceResult
from serve_app.wire.limits import Limits

VERSION_HEADER = "x-model-version"
MODEL_HEADER = "x-model-name"


def plane_of(request: Request) -> DataPlane:
    return request.app.state.plane


def limits_of(request: Request) -> Limits:
    return request.app.state.limits


def json_response(content: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """ASCII-escaped JSON: renders whatever text an error quotes, lone surrogates included."""
    return Response(json.dumps(content), status_code=status_code, media_type="application/json", headers=headers)


def answer_headers(result: InferenceResult, request_id: str, request: Request) -> dict[str, str]:
    """Which model and version answered, taken from the version that did, and the request's
    id, unless the server in front answers it already (create_api `answers_request_id`)."""
    headers = {MODEL_HEADER: result.model, VERSION_HEADER: str(result.version)}
    if request.app.state.answers_request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return headers
