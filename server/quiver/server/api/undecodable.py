"""Request bytes that do not decode, held until the RPC's guard (after authentication) can
answer INVALID_ARGUMENT for them. Left to grpc, a decode error answers UNKNOWN (unary) or
INTERNAL (inside a request stream)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from quiver.server.api.errors import undecodable_request
from quiver.server.core.errors import InvalidArgument


class Undecodable:
    """Stands in for one request message that did not decode."""

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def lenient(deserializer: Callable[[bytes], Any] | None, method: str) -> Any:
    """``deserializer``, returning Undecodable instead of raising."""
    if deserializer is None:
        return None
    decode = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:  # invalid UTF-8, nesting past the limit, corrupt bytes
            return Undecodable(undecodable_request(method, data, exc))

    return deserialize


def decoded(request: Any) -> Any:
    """The request, or its INVALID_ARGUMENT raised."""
    if isinstance(request, Undecodable):
        raise request.error
    return request


async def decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield decoded(request)
