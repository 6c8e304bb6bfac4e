"""The V2 routes' contract as OpenAPI, for clients and for the schema-driven fuzz tests.

The infer route reads the raw body (JSON, or JSON then binary tensors), so its request
schema is declared here from the codec's own request model: what is documented is what
is validated.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from serve_app.rest.common import VERSION_HEADER
from serve_app.rest.v1_openapi import REQUEST_ID, REQUEST_ID_TEXT, error_responses
from serve_app.wire.v2_json import BINARY_CONTENT_TYPE, HEADER_LENGTH
from serve_app.wire.v2_tensors import InferenceRequest


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataV2(BaseModel):
    name: str
    versions: list[str] = Field(description="the one version this replica serves now")
    platform: str
    inputs: list[TensorMetadata] = Field(description="one tensor per feature, in schema order")
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = Field(default=None, description="absent when the output is sent as binary")
    parameters: dict[str, Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str = Field(description="the version that answered")
    id: str | None = None
    outputs: list[ResponseOutput]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class V1Live(BaseModel):
    status: str = Field(description='"alive", as KServe\'s model server answers')


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` written in place: embedded in the OpenAPI
    document, `#/$defs/...` would point at the document's root, where there are none."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def _ok(model: type[BaseModel], *errors: int, version_header: bool = False) -> dict[str, Any]:
    ok: dict[str, Any] = {"model": model}
    if version_header:
        ok["headers"] = {VERSION_HEADER: {"description": "the version that answered", "schema": {"type": "string"}}}
    return {"response_model": None, "responses": {200: ok, **error_responses(*errors)}}


SERVER_LIVE_V1 = _ok(V1Live)
SERVER_METADATA = _ok(ServerMetadata)
LIVE = _ok(Live)
READY = _ok(Ready, 503)
MODEL_METADATA = _ok(ModelMetadataV2, 404, 503)
MODEL_READY = _ok(ModelReady, 404, 503, version_header=True)
INFER: dict[str, Any] = {
    "response_model": None,
    "responses": {
        200: {
            "content": {
                "application/json": {"schema": _inline(InferenceResponse)},
                BINARY_CONTENT_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": f"the JSON response, then binary outputs; {HEADER_LENGTH} gives the JSON's length",
                    }
                },
            },
            "headers": {
                VERSION_HEADER: {"description": "the version that answered", "schema": {"type": "string"}},
                REQUEST_ID: {"description": REQUEST_ID_TEXT, "schema": {"type": "string"}},
            },
        },
        **error_responses(404, 413, 422, 503),
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline(InferenceRequest)},
                BINARY_CONTENT_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": f"a JSON inference request of {HEADER_LENGTH} bytes, then each input's binary "
                        "data in input order, sized by its binary_data_size parameter",
                    }
                },
            },
        }
    },
}
