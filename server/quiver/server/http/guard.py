"""Around every request: request id, drain check, authentication, errors as OpenAI's
envelope, one access log line and the same metrics as the gRPC calls (method label
``HTTP <route name>``)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from quiver.server.api.context import principal_var, request_id_var
from quiver.server.auth.authenticate import authenticate
from quiver.server.auth.keys import KeyRing
from quiver.server.core.errors import (
    QuiverError,
    Unauthenticated,
    Unavailable,
    database_unavailable,
    disk_full,
)
from quiver.server.core.principal import Principal
from quiver.server.http import errors
from quiver.server.metrics import Metrics
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("quiver.http")
SINGLE_HEADERS = ("authorization", "x-on-behalf-of")

Handler = Callable[[Request, Principal], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass
class Gate:
    """Why requests are refused right now (starting, draining), or None when serving."""

    keys: KeyRing
    metrics: Metrics
    closed_reason: str | None = "the server is starting"


def request_id_of(request: Request) -> str:
    supplied = request.headers.get("x-request-id", "")
    if 0 < len(supplied) <= 128 and supplied.isprintable():
        return supplied
    return secrets.token_hex(8)


def error_response(error: errors.HttpError, request_id: str) -> JSONResponse:
    headers = {"x-request-id": request_id}
    if error.status in (409, 400, 404, 413):  # the openai SDK retries 409s unless told
        headers["x-should-retry"] = "false"
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _principal(gate: Gate, request: Request) -> Principal:
    if gate.closed_reason is not None:
        raise Unavailable(f"{gate.closed_reason}; retry shortly", reason="NOT_SERVING")
    for name in SINGLE_HEADERS:
        if len(request.headers.getlist(name)) > 1:
            raise Unauthenticated(
                f"the {name!r} header was sent more than once; send it exactly once",
                reason="DUPLICATE_HEADER",
            )
    return authenticate(
        gate.keys,
        request.headers.get("authorization", ""),
        request.headers.get("x-on-behalf-of", ""),
        carrier="header",
    )


def guarded(gate: Gate, name: str, handler: Handler) -> Endpoint:
    """``handler`` as a Starlette endpoint with everything above around it."""
    method = f"HTTP {name}"

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        request_id = request_id_of(request)
        request_id_var.set(request_id)
        tenant = ""
        status = 500
        try:
            principal = _principal(gate, request)
            tenant = principal.describe()
            principal_var.set(principal)
            response = await handler(request, principal)
            response.headers["x-request-id"] = request_id
            status = response.status_code
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception as exc:
            error = _as_error(exc, name, request_id)
            status = error.status
            return error_response(error, request_id)
        finally:
            seconds = time.perf_counter() - started
            gate.metrics.rpcs.labels(method, str(status)).inc()
            gate.metrics.rpc_seconds.labels(method).observe(seconds)
            log.info(
                "http",
                extra={
                    "method": method,
                    "path": request.url.path[:200],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "tenant": tenant,
                },
            )

    return endpoint


def _as_error(exc: Exception, name: str, request_id: str) -> errors.HttpError:
    if not isinstance(exc, QuiverError):
        full = disk_full(exc)
        if full is not None:
            log.warning("disk full in %s: %s", name, exc)
            exc = full
        down = database_unavailable(exc)
        if down is not None:
            log.warning("database unavailable in %s: %s", name, exc)
            exc = down
    if isinstance(exc, QuiverError):
        return errors.from_core(exc)
    log.exception("unhandled error in HTTP %s", name, exc_info=exc)
    return errors.internal(request_id)
