"""The server interceptor: every RPC but health and reflection goes through the handler
wrapper (api/handler_wrapper.py), which admits a caller only while the server is serving
(api/serving_gate.py) and with a valid key (auth/authenticate.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from grpc import aio
from quiver.server.api.call_metadata import CallMetadata
from quiver.server.api.handler_wrapper import Handler, wrap
from quiver.server.api.serving_gate import ServingGate
from quiver.server.auth.authenticate import authenticate
from quiver.server.auth.keys import KeyRing
from quiver.server.core.principal import Principal
from quiver.server.metrics import Metrics

# Health and reflection expose no tenant data and answer without a key.
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class QuiverInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, keys: KeyRing, metrics: Metrics) -> None:
        self._keys = keys
        self._metrics = metrics
        self.gate = ServingGate()

    @property
    def closed_reason(self) -> str | None:
        """Why RPCs are refused right now (starting up, draining), or None when serving."""
        return self.gate.closed_reason

    @closed_reason.setter
    def closed_reason(self, reason: str | None) -> None:
        self.gate.closed_reason = reason

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        return wrap(handler, method, self._admit, self._metrics)

    def _admit(self, metadata: CallMetadata) -> Principal:
        self.gate.check()
        return authenticate(
            self._keys,
            metadata.values.get("authorization"),
            metadata.values.get("x-on-behalf-of"),
        )
