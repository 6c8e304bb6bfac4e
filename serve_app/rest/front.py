"""The ASGI front of a replica: predictions go straight to their handler, the rest to FastAPI.

FastAPI's routing, dependency resolution and middleware stack cost more of a replica's
CPU on a one-row prediction than decoding and predicting together (profiled by
benchmarks/profile_serving.py). The prediction routes are the only ones on the hot path, so the front
matches them itself, with the patterns FastAPI compiles for the same paths, and calls the
very handlers FastAPI has registered for them; FastAPI still serves every other route, the
OpenAPI document (where the hot routes are described too) and routing's own refusals.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import Receive, Scope, Send

Handler = Callable[..., Awaitable[Response]]
ErrorRenderer = Callable[[Request, Exception], Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    """A POST route the front answers itself: its path as FastAPI writes it, and its handler,
    called with the request and the path's parameters as keywords."""

    path: str
    handler: Handler


class Front:
    """The ASGI app Serve runs: the hot routes, then FastAPI for everything else."""

    def __init__(self, api: FastAPI, routes: list[HotRoute], render_error: ErrorRenderer, handled: type[Exception]) -> None:
        self.api = api
        self._routes = [(compile_path(r.path)[0], r.handler) for r in routes]
        self._render_error = render_error
        self._handled = handled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = _route_path(scope)
            for pattern, handler in self._routes:
                match = pattern.match(path)
                if match is not None:
                    await self._answer(handler, match, scope, receive, send)
                    return
        await self.api(scope, receive, send)

    async def _answer(self, handler: Handler, match: re.Match[str], scope: Scope, receive: Receive, send: Send) -> None:
        params = match.groupdict()
        scope["app"], scope["path_params"] = self.api, params  # what FastAPI's handlers read
        request = Request(scope, receive)
        try:
            response = await handler(request, **params)
        except self._handled as exc:
            response = await self._render_error(request, exc)
        await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point, as Starlette's router matches it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
