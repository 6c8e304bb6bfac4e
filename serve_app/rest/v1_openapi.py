"""The V1 routes' contract, as OpenAPI: what clients may send and every answer they may get.

The predict route reads the raw body so that it can name the first problem precisely,
which leaves FastAPI nothing to infer a request schema from; it is declared here instead.
The schema is what the fuzz tests generate requests from and check answers against, so
an answer that strays from it (a 5xx, an undeclared status, another body) fails them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nonstop.manifest import Scalar
from serve_app.edge import REQUEST_ID_HEADER
from serve_app.replica.state import ModelMetadata
from serve_app.rest.common import MODEL_HEADER, VERSION_HEADER
from serve_app.wire.v1_arrow import ARROW_STREAM

Value = float | str | None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[dict[str, Value] | list[Value]] = Field(
        min_length=1,
        description="objects keyed by feature name, or lists of values in schema order; "
        "null is a missing value, imputed as in training; NaN and Infinity are refused",
    )


class PredictResponse(BaseModel):
    predictions: list[Scalar] = Field(description="one per instance: a class label, or a number for a regression")
    model_version: str
    probabilities: list[list[float]] | None = Field(
        default=None, description="only with ?probabilities=true: one list per instance, in `classes` order"
    )
    classes: list[Scalar] | None = Field(default=None, description="only with ?probabilities=true: the columns' classes")


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong, in words")


class ModelList(BaseModel):
    models: list[str]


REQUEST_ID = REQUEST_ID_HEADER
REQUEST_ID_TEXT = "the client's x-request-id, or one made for it: its capture and its outcome are keyed by it (docs/capture.md)"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Each status's answer: the one error shape (serve_app/rest/api.py)."""
    return {status: {"model": ErrorBody} for status in statuses}


PREDICT: dict[str, Any] = {
    "responses": {
        200: {
            "model": PredictResponse,
            "headers": {
                VERSION_HEADER: {"description": "the version that answered", "schema": {"type": "string"}},
                MODEL_HEADER: {"description": "the model that answered", "schema": {"type": "string"}},
                REQUEST_ID: {"description": REQUEST_ID_TEXT, "schema": {"type": "string"}},
            },
        },
        **error_responses(404, 413, 422, 503),
    },
    "openapi_extra": {
        "parameters": [
            {
                "name": "probabilities",
                "in": "query",
                "required": False,
                "schema": {"type": "boolean", "default": False},
                "description": "also answer a classifier's class probabilities (and their classes); "
                "a model without them answers 422. KServe V1 clients that leave it out get the V1 answer unchanged",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": PredictRequest.model_json_schema()},
                ARROW_STREAM: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "an Arrow IPC stream with one column per feature, named as in the schema; "
                        "null is a missing value; NaN and infinities are refused",
                    }
                },
            },
        }
    },
}
METADATA: dict[str, Any] = {"response_model": None, "responses": {200: {"model": ModelMetadata}, **error_responses(404)}}
LISTING: dict[str, Any] = {"response_model": None, "responses": {200: {"model": ModelList}}}
