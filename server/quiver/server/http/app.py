"""The Starlette application: every route under ``/v1`` and under the gateway's
``/api/v1/llm``; unknown routes and methods answer in OpenAI's error envelope."""

from __future__ import annotations

import asyncio

from quiver.server.api.context import request_id_var
from quiver.server.http import errors
from quiver.server.http.batches_routes import BatchRoutes
from quiver.server.http.files_routes import FileRoutes
from quiver.server.http.guard import Gate, error_response, request_id_of
from quiver.server.http.services import HttpServices
from quiver.server.http.store_files_routes import StoreFileRoutes
from quiver.server.http.stores_routes import StoreRoutes
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount

PREFIXES = ("/v1", "/api/v1/llm")


def routes(core: HttpServices, gate: Gate, closing: asyncio.Event) -> list[BaseRoute]:
    inner: list[BaseRoute] = [
        *FileRoutes(core).routes(gate),
        *StoreRoutes(core).routes(gate),
        *StoreFileRoutes(core).routes(gate),
        *BatchRoutes(core, closing).routes(gate),
    ]
    return [Mount(prefix, routes=inner) for prefix in PREFIXES]


async def _http_error(request: Request, exc: Exception) -> Response:
    request_id = request_id_of(request)
    request_id_var.set(request_id)
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    method, path = request.method, request.url.path
    error = (
        errors.method_not_allowed(method, path)
        if status == 405
        else errors.not_found_route(method, path)
        if status == 404
        else errors.HttpError(status, "invalid_request_error", str(exc)[:500], None, None)
    )
    return error_response(error, request_id)


def build_app(core: HttpServices, gate: Gate, closing: asyncio.Event) -> Starlette:
    return Starlette(
        routes=routes(core, gate, closing),
        exception_handlers={HTTPException: _http_error},
    )
