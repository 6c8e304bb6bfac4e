"""The ASGI app of one replica: FastAPI with the V1 and V2 routes, behind the front.

Errors reach the client in one shape, `{"error": ...}`, with the status the shared error
table gives their type (serve_app/edge.py); routing's own refusals (no such path, wrong
method) take the same shape. The prediction routes are answered by the front itself
(serve_app/rest/front.py), with the very handlers registered here.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from nonstop.errors import NonstopError
from serve_app.edge import error_text, http_status, retry_headers
from serve_app.capture.outcomes import OutcomeSink
from serve_app.replica.dataplane import DataPlane
from serve_app.rest import outcome_routes, v1_routes, v2_routes
from serve_app.rest.common import json_response, plane_of
from serve_app.rest.front import Front
from serve_app.wire.limits import Limits


async def _render_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, NonstopError):  # registered for NonstopError only
        raise exc
    model = request.path_params.get("model")
    if model is not None:
        plane_of(request).refused(model, exc)
    # bounded, and ASCII-escaped by json.dumps: any client text renders, lone surrogates included
    return json_response({"error": error_text(exc)}, status_code=http_status(exc), headers=retry_headers(exc) or None)


async def _render_http_error(_: Request, exc: Exception) -> Response:
    """Routing's own refusals (no such path, wrong method) in the one error shape."""
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    return json_response({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def create_api(plane: DataPlane, limits: Limits, outcomes: OutcomeSink | None = None, answers_request_id: bool = True) -> Front:
    """The ASGI app over one replica's data plane: FastAPI, behind the front that answers
    the prediction routes itself. `outcomes`: where posted outcomes go (none: refused).
    `answers_request_id`: False behind Ray Serve, whose HTTP servers (proxy and direct
    ingress) answer `x-request-id` on every response themselves (RequestIdMiddleware),
    with the id they put in the request's header when the client sent none, the id the
    routes read: a second header of ours would reach the client as "id, id"."""
    api = FastAPI(title="nonstop", summary="Predictions from the registry's current model version")
    api.state.plane = plane
    api.state.limits = limits
    api.state.outcomes = outcomes
    api.state.answers_request_id = answers_request_id
    api.add_exception_handler(NonstopError, _render_error)
    api.add_exception_handler(HTTPException, _render_http_error)
    api.include_router(v1_routes.create_router())
    api.include_router(v2_routes.create_router())
    api.include_router(outcome_routes.create_router())
    return Front(api, [*v1_routes.HOT_ROUTES, *v2_routes.HOT_ROUTES], _render_error, NonstopError)
