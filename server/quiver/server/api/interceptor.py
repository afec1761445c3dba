"""One server interceptor: request id, authentication, error mapping and an access log line.

It wraps every RPC's behaviour (all four streaming shapes), so servicers only raise core
errors and never see metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
from grpc import aio
from quiver.server.api.context import principal_var, request_id_var
from quiver.server.api.errors import status_code_of, to_status, undecodable_request
from quiver.server.auth.keys import KeyRing
from quiver.server.core.errors import (
    InvalidArgument,
    QuiverError,
    Unauthenticated,
    Unavailable,
    disk_full,
)
from quiver.server.core.principal import Principal
from quiver.server.metrics import Metrics

log = logging.getLogger("quiver.rpc")
if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

OPEN_TENANT = "default"
MAX_ON_BEHALF_OF = 256
SINGLE_HEADERS = frozenset({"authorization", "x-on-behalf-of"})
# Health and reflection expose no tenant data and answer without a key.
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class _Call:
    """What the interceptor knows about one RPC while it runs."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.request_id = ""
        self.tenant = ""


class QuiverInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, keys: KeyRing, metrics: Metrics) -> None:
        self._keys = keys
        self._metrics = metrics
        # Why RPCs are refused right now (starting up, draining), or None when serving.
        self.closed_reason: str | None = "the server is starting"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        return _wrap(handler, method, self._authenticate, self._metrics)

    def _authenticate(self, metadata: dict[str, str]) -> Principal:
        if self.closed_reason is not None:
            raise Unavailable(
                f"{self.closed_reason}; retry shortly (watch grpc.health.v1)",
                reason="NOT_SERVING",
            )
        subject = metadata.get("x-on-behalf-of", "")
        if len(subject) > MAX_ON_BEHALF_OF or not subject.isprintable():
            raise Unauthenticated(
                f"x-on-behalf-of must be printable and at most {MAX_ON_BEHALF_OF} characters",
                reason="BAD_ON_BEHALF_OF",
            )
        if self._keys.open:
            return Principal(OPEN_TENANT, subject)
        header = metadata.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            raise Unauthenticated(
                "missing 'authorization: Bearer <key>' metadata", reason="MISSING_API_KEY"
            )
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "authorization metadata must be 'Bearer <key>'", reason="BAD_AUTHORIZATION"
            )
        tenant = self._keys.tenant_for(key.strip())
        if tenant is None:
            raise Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
        return Principal(tenant, subject)


Authenticate = Callable[[dict[str, str]], Principal]


def _metadata(context: aio.ServicerContext[Any, Any]) -> tuple[dict[str, str], list[str]]:
    """The call's text metadata by lower-case key, and the keys among SINGLE_HEADERS sent
    more than once."""
    metadata: dict[str, str] = {}
    repeated: list[str] = []
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        name = key.lower()
        if name in metadata and name in SINGLE_HEADERS and name not in repeated:
            repeated.append(name)
        metadata[name] = value
    return metadata, repeated


def _begin(call: _Call, context: aio.ServicerContext[Any, Any], auth: Authenticate) -> None:
    metadata, repeated = _metadata(context)
    supplied = metadata.get("x-request-id", "")
    call.request_id = (
        supplied if 0 < len(supplied) <= 128 and supplied.isprintable() else secrets.token_hex(8)
    )
    request_id_var.set(call.request_id)
    if repeated:  # which copy would win is an accident of ordering: refuse the call
        raise Unauthenticated(
            f"'{repeated[0]}' metadata was sent more than once; send it exactly once",
            reason="DUPLICATE_METADATA",
        )
    principal = auth(metadata)
    call.tenant = principal.describe()
    principal_var.set(principal)


async def _fail(call: _Call, context: aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    """Aborts the RPC with the status for ``exc`` (raises AbortError, as abort does)."""
    if not isinstance(exc, QuiverError):
        full = disk_full(exc)
        if full is not None:
            log.warning("disk full in %s: %s", call.method, exc)
            exc = full
    if isinstance(exc, QuiverError):
        call.code = status_code_of(exc)
        await cast(Any, context).abort_with_status(to_status(exc, call.request_id))
    call.code = grpc.StatusCode.INTERNAL
    log.exception("unhandled error in %s", call.method, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {call.request_id}); the server logged the details",
    )


def _finish(call: _Call, context: aio.ServicerContext[Any, Any], metrics: Metrics) -> None:
    if call.code == grpc.StatusCode.OK and context.cancelled():
        call.code = grpc.StatusCode.CANCELLED
    seconds = time.perf_counter() - call.started
    name = call.method.rsplit("/", 1)[-1]
    metrics.rpcs.labels(name, call.code.name).inc()
    metrics.rpc_seconds.labels(name).observe(seconds)
    log.info(
        "rpc",
        extra={
            "method": call.method,
            "code": call.code.name,
            "duration_ms": round(seconds * 1000, 2),
            "tenant": call.tenant,
        },
    )


@contextlib.asynccontextmanager
async def _guarded(
    method: str, context: aio.ServicerContext[Any, Any], auth: Authenticate, metrics: Metrics
) -> AsyncIterator[None]:
    """Around one RPC: request id and caller first; every error becomes a status; one log
    line and the metrics at the end."""
    call = _Call(method)
    try:
        _begin(call, context, auth)
        yield
    except aio.AbortError:
        raise
    except asyncio.CancelledError:  # the caller went away or the server is stopping
        call.code = grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:  # every other error becomes a status
        await _fail(call, context, exc)
    finally:
        _finish(call, context, metrics)


class _Undecodable:
    """Stands in for request bytes that do not decode, until the RPC's guard (after
    authentication) answers INVALID_ARGUMENT for them. Left to grpc, a decode error answers
    UNKNOWN (unary) or INTERNAL (inside a request stream)."""

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def _lenient(deserializer: Any, method: str) -> Any:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # invalid UTF-8, nesting past the limit, corrupt bytes
            return _Undecodable(undecodable_request(method, data, exc))

    return deserialize


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _wrap(handler: Handler, method: str, auth: Authenticate, metrics: Metrics) -> Handler:
    ser = {
        "request_deserializer": _lenient(handler.request_deserializer, method),
        "response_serializer": handler.response_serializer,
    }
    streamed = handler.stream_unary is not None or handler.stream_stream is not None
    decode: Callable[[Any], Any] = _decoded_stream if streamed else _decoded
    if handler.unary_unary or handler.stream_unary:
        inner_unary: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            async with _guarded(method, context, auth, metrics):
                return await inner_unary(decode(request), context)
            raise AssertionError("unreachable: errors end in an abort")

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary, **ser)
        return grpc.stream_unary_rpc_method_handler(unary, **ser)

    inner_stream: Any = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async with _guarded(method, context, auth, metrics):
            async for response in inner_stream(decode(request), context):
                yield response

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **ser)
    return grpc.stream_stream_rpc_method_handler(streaming, **ser)
