"""What the two transports share at the edge: the one error table, and what they echo.

Errors carry no status codes (nonstop/errors.py names conditions, not answers). The table
below is the only place that maps an error type to what a client sees, its HTTP status
and its gRPC code side by side, so the REST routes and the gRPC servicer cannot drift
apart. An error type not listed takes the row of its nearest listed ancestor; one with
none is a server fault (500, INTERNAL).
"""

from __future__ import annotations

import re
import uuid
from typing import NamedTuple

import grpc

from nonstop.errors import (
    AliasNotFound,
    ConfigError,
    DataValidationError,
    InvalidInput,
    ModelLoadError,
    ModelLoadPending,
    ModelNotFound,
    ModelNotReady,
    NonstopError,
    PayloadTooLarge,
    StorageError,
    UnknownModel,
    VersionNotFound,
    clip,
)
from serve_app.wire.limits import BodyTimeout

# An error message quotes what the client sent; what goes back is bounded whatever was sent.
MAX_ERROR_CHARS = 600
# The canary's sticky key: an HTTP header, and gRPC metadata of the same name.
KEY_HEADER = "x-request-key"
# The request's id: the client's, or one made here; answered back in the response header
# (HTTP) or the trailing metadata (gRPC) of that name, and the key its capture and its
# outcome are joined on (docs/capture.md).
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class Codes(NamedTuple):
    http: int
    grpc: grpc.StatusCode


ERROR_CODES: dict[type[NonstopError], Codes] = {
    UnknownModel: Codes(404, grpc.StatusCode.NOT_FOUND),
    ModelNotFound: Codes(404, grpc.StatusCode.NOT_FOUND),
    VersionNotFound: Codes(404, grpc.StatusCode.NOT_FOUND),
    AliasNotFound: Codes(404, grpc.StatusCode.NOT_FOUND),
    # only HTTP reads a body as a stream; a gRPC message arrives whole before it is handed over
    BodyTimeout: Codes(408, grpc.StatusCode.INVALID_ARGUMENT),
    PayloadTooLarge: Codes(413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    InvalidInput: Codes(422, grpc.StatusCode.INVALID_ARGUMENT),
    DataValidationError: Codes(422, grpc.StatusCode.INVALID_ARGUMENT),
    ConfigError: Codes(422, grpc.StatusCode.INVALID_ARGUMENT),
    ModelNotReady: Codes(503, grpc.StatusCode.UNAVAILABLE),
    ModelLoadPending: Codes(503, grpc.StatusCode.UNAVAILABLE),  # with Retry-After (`retry_headers`)
    ModelLoadError: Codes(503, grpc.StatusCode.UNAVAILABLE),
    # storage a request itself writes (posted outcomes) out of reach: try again later
    StorageError: Codes(503, grpc.StatusCode.UNAVAILABLE),
}
SERVER_FAULT = Codes(500, grpc.StatusCode.INTERNAL)


def codes(exc: NonstopError) -> Codes:
    """The row of the nearest listed ancestor of the error's type; a server fault if none is."""
    return next((ERROR_CODES[k] for k in type(exc).__mro__ if k in ERROR_CODES), SERVER_FAULT)


def http_status(exc: NonstopError) -> int:
    return codes(exc).http


def grpc_code(exc: NonstopError) -> grpc.StatusCode:
    return codes(exc).grpc


def retry_headers(exc: NonstopError) -> dict[str, str]:
    """`Retry-After` for an error that says when trying again can succeed (a model still
    loading); none otherwise. gRPC's UNAVAILABLE is itself the code clients retry on."""
    if isinstance(exc, ModelLoadPending):
        return {"retry-after": str(exc.retry_after_s)}
    return {}


def error_text(exc: NonstopError) -> str:
    return clip(exc.message, MAX_ERROR_CHARS)


def request_id(given: str | None) -> str:
    """The client's request id if it sent a usable one (1 to 128 characters of
    `A-Za-z0-9._:@/+=-`: it lands in storage and in headers), else a new one."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    if given:
        raise InvalidInput(f"header {REQUEST_ID_HEADER} {clip(given)!r} is not 1 to 128 characters of A-Za-z0-9._:@/+=-")
    return uuid.uuid4().hex
