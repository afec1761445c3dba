"""Ends an RPC that raised: a core error (a full disk included) aborts with its status and
details; anything else is a bug, logged, and answered INTERNAL with the request id."""

from __future__ import annotations

import logging
from typing import Any, NoReturn, cast

import grpc
from grpc import aio
from quiver.server.api.errors import status_code_of, to_status
from quiver.server.core.errors import QuiverError, database_unavailable, disk_full

log = logging.getLogger("quiver.rpc")


def core_error(exc: BaseException, method: str) -> QuiverError | None:
    """The core error ``exc`` is or stands for, or None when it is a bug."""
    if isinstance(exc, QuiverError):
        return exc
    full = disk_full(exc)
    if full is not None:
        log.warning("disk full in %s: %s", method, exc)
        return full
    down = database_unavailable(exc)
    if down is not None:
        log.warning("database unavailable in %s: %s", method, exc)
    return down


def status_code(error: QuiverError | None) -> grpc.StatusCode:
    return grpc.StatusCode.INTERNAL if error is None else status_code_of(error)


async def abort(
    context: aio.ServicerContext[Any, Any],
    error: QuiverError | None,
    exc: BaseException,
    method: str,
    request_id: str,
) -> NoReturn:
    """Aborts the RPC with the status for ``error`` (raises AbortError, as abort does)."""
    if error is not None:
        await cast(Any, context).abort_with_status(to_status(error, request_id))
    log.exception("unhandled error in %s", method, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {request_id}); the server logged the details",
    )
    raise AssertionError("unreachable: abort raises")
