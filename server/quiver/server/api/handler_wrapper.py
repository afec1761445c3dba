"""The one wrapper around every RPC's behaviour (all four streaming shapes): request id and
caller first, then the servicer; every error becomes a status; metrics and one log line at
the end. Servicers only raise core errors and never see metadata."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc import aio
from quiver.server.api import error_mapping
from quiver.server.api.access_log import CallRecord, record
from quiver.server.api.call_metadata import CallMetadata, read_metadata
from quiver.server.api.context import principal_var, request_id_var
from quiver.server.api.request_id import request_id
from quiver.server.api.undecodable import decoded, decoded_stream, lenient
from quiver.server.core.principal import Principal
from quiver.server.metrics import Metrics

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

Admit = Callable[[CallMetadata], Principal]
"""Who the caller is, from the call's metadata; raises a core error to refuse the call."""


def _begin(call: CallRecord, context: aio.ServicerContext[Any, Any], admit: Admit) -> None:
    metadata = read_metadata(context)
    call.request_id = request_id(metadata.values)
    request_id_var.set(call.request_id)
    metadata.require_single()
    principal = admit(metadata)
    call.tenant = principal.describe()
    principal_var.set(principal)


@contextlib.asynccontextmanager
async def _guarded(
    method: str, context: aio.ServicerContext[Any, Any], admit: Admit, metrics: Metrics
) -> AsyncIterator[None]:
    call = CallRecord(method)
    try:
        _begin(call, context, admit)
        yield
    except aio.AbortError:
        raise
    except asyncio.CancelledError:  # the caller went away or the server is stopping
        call.code = grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:  # every other error becomes a status
        error = error_mapping.core_error(exc, method)
        call.code = error_mapping.status_code(error)
        await error_mapping.abort(context, error, exc, method, call.request_id)
    finally:
        record(call, context.cancelled(), metrics)


def wrap(handler: Handler, method: str, admit: Admit, metrics: Metrics) -> Handler:
    """``handler`` with the guard around its behaviour and a deserializer that defers a decode
    error until after the caller is admitted."""
    ser = {
        "request_deserializer": lenient(handler.request_deserializer, method),
        "response_serializer": handler.response_serializer,
    }
    streamed = handler.stream_unary is not None or handler.stream_stream is not None
    decode: Callable[[Any], Any] = decoded_stream if streamed else decoded
    if handler.unary_unary or handler.stream_unary:
        inner_unary: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            async with _guarded(method, context, admit, metrics):
                return await inner_unary(decode(request), context)
            raise AssertionError("unreachable: errors end in an abort")

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary, **ser)
        return grpc.stream_unary_rpc_method_handler(unary, **ser)

    inner_stream: Any = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async with _guarded(method, context, admit, metrics):
            async for response in inner_stream(decode(request), context):
                yield response

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **ser)
    return grpc.stream_stream_rpc_method_handler(streaming, **ser)
