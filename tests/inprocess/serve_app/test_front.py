"""The ASGI front answers the prediction routes itself, exactly as FastAPI's routes would:
every request below goes to both, in-process over httpx, and must get the same answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from nonstop.loading import TrustPolicy
from nonstop.registry import Registry
from serve_app.config import ModelTarget
from serve_app.replica.dataplane import DataPlane
from serve_app.replica.holder import ModelHolder
from serve_app.rest.api import create_api
from serve_app.rest.front import Front
from serve_app.wire.limits import Limits
from tests.conftest import MODEL

V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"


def _cases(registry: Registry) -> list[tuple[str, str, dict[str, Any]]]:
    manifest = registry.manifest(MODEL, 1)
    rows = manifest.samples.inputs[:3]
    v2_matrix = {"inputs": [{"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": rows}]}
    return [
        ("POST", V1, {"json": {"instances": rows}}),
        ("POST", V1 + "?probabilities=true", {"json": {"instances": rows}}),
        ("POST", V1 + "?probabilities=maybe", {"json": {"instances": rows}}),
        ("POST", V1, {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("POST", V1, {"json": {"instances": [rows[0][:-1]]}}),
        ("POST", V1, {"content": b"x" * 5000, "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/models/nope:predict", {"json": {"instances": rows}}),
        ("POST", f"/v1/models/{MODEL}:predict:predict", {"json": {"instances": rows}}),
        ("GET", V1, {}),  # FastAPI reads it as the metadata of a model named "...:predict"
        ("POST", V2, {"json": v2_matrix}),
        ("POST", f"/v2/models/{MODEL}/versions/1/infer", {"json": v2_matrix}),
        ("POST", f"/v2/models/{MODEL}/versions/7/infer", {"json": v2_matrix}),
        ("POST", f"/v2/models/{MODEL}/versions/%C2%B2/infer", {"json": v2_matrix}),
        ("POST", V2, {"json": {"inputs": []}}),
        ("POST", "/v1/models", {"json": {}}),
    ]


def _answers(registry: Registry, front_or_api: str) -> list[tuple[int, Any, dict[str, str]]]:
    async def go() -> list[tuple[int, Any, dict[str, str]]]:
        holder = ModelHolder(registry, TrustPolicy())
        await holder.configure(ModelTarget(model=MODEL, poll_interval_s=3600))
        front = create_api(DataPlane(holder), Limits(max_body_bytes=4096))
        app = front if front_or_api == "front" else front.api
        answers = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            for method, path, kwargs in _cases(registry):
                response = await client.request(method, path, **kwargs)
                headers = {k: v for k, v in response.headers.items() if k.startswith("x-") or k == "content-type"}
                if "x-request-id" in headers:  # a new one each request: its presence is what compares
                    headers["x-request-id"] = "made"
                answers.append((response.status_code, json.loads(response.content), headers))
        await holder.close()
        return answers

    return asyncio.run(go())


def test_the_front_answers_every_prediction_request_as_fastapi_does(served: Registry) -> None:
    through_front, through_fastapi = _answers(served, "front"), _answers(served, "api")
    assert through_front == through_fastapi
    statuses = [status for status, _, _ in through_front]
    assert statuses == [200, 200, 422, 422, 422, 413, 404, 404, 404, 200, 200, 404, 404, 422, 405]


def test_the_front_takes_the_prediction_routes_and_hands_on_the_rest(served: Registry) -> None:
    """Counted at FastAPI's door: a prediction never reaches it, anything else does."""
    reached: list[str] = []

    async def go() -> list[int]:
        holder = ModelHolder(served, TrustPolicy())
        await holder.configure(ModelTarget(model=MODEL, poll_interval_s=3600))
        front = create_api(DataPlane(holder), Limits())
        assert isinstance(front, Front)

        class Counting:
            def __init__(self, app: Any) -> None:
                self.app = app

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                reached.append(scope["path"])
                await self.app(scope, receive, send)

        front.api.add_middleware(Counting)
        rows = served.manifest(MODEL, 1).samples.inputs
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://test") as client:
            statuses = [
                (await client.post(V1, json={"instances": rows})).status_code,
                (await client.post(V2, json={"inputs": []})).status_code,
                (await client.get(f"/v1/models/{MODEL}")).status_code,
                (await client.get("/openapi.json")).status_code,
            ]
        await holder.close()
        return statuses

    assert asyncio.run(go()) == [200, 422, 200, 200]
    assert reached == [f"/v1/models/{MODEL}", "/openapi.json"]
