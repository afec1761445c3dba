"""SearchVectorStore from any replica: a replica that does not own the store's index
(core/replicas.py) forwards the call to the owner over gRPC, one hop only.

The forwarded call carries the caller's authorization, on-behalf-of and request id, this
replica's id (``x-quiver-forwarded-by``: the owner never forwards such a call again) and the
epoch it was routed at (``x-quiver-epoch``), under the caller's deadline capped by
``--replica-forward-timeout-seconds``. Every answer names the replica that searched in its
trailing metadata (``x-quiver-replica``). The owner's answer, or its error with the same
status and details, is passed back as is; an owner that cannot be reached (or is starting or
draining, or does not answer within the forward timeout) is marked dead and the search is
answered here instead, from an index caught up with the database.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from quiver.server.api.call_metadata import read_metadata
from quiver.server.core.replicas import Replicas
from quiver.server.metrics import Metrics
from quiver.v1 import vector_stores_pb2 as pb
from quiver.v1 import vector_stores_pb2_grpc

log = logging.getLogger("quiver.replicas")

FORWARDED_BY = "x-quiver-forwarded-by"
FORWARD_EPOCH = "x-quiver-epoch"
SERVED_BY = "x-quiver-replica"
PASSED_ON = ("authorization", "x-on-behalf-of", "x-request-id")
STATUS_DETAILS = "grpc-status-details-bin"
MAX_CHANNELS = 64
"""Channels to other replicas kept open (least recently used closed beyond it)."""
NOT_SERVING = "NOT_SERVING"

Ctx = aio.ServicerContext[Any, Any]


def _reason(trailers: Any) -> str | None:
    """The ErrorInfo reason in a status's details trailer, if any."""
    for key, value in trailers or ():
        if key != STATUS_DETAILS or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return str(info.reason)
    return None


class PeerChannels:
    """A channel per replica address, at most ``max_channels`` open."""

    def __init__(
        self,
        credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, int]],
        max_channels: int = MAX_CHANNELS,
    ) -> None:
        self.credentials = credentials
        self.options = options
        self.max_channels = max_channels
        self._open: OrderedDict[str, aio.Channel] = OrderedDict()
        self._closing: list[aio.Channel] = []

    def stub(self, address: str) -> vector_stores_pb2_grpc.VectorStoreServiceAsyncStub:
        channel = self._open.get(address)
        if channel is None:
            if self.credentials is None:
                channel = aio.insecure_channel(address, options=self.options)
            else:
                channel = aio.secure_channel(address, self.credentials, options=self.options)
            self._open[address] = channel
            while len(self._open) > self.max_channels:
                _, oldest = self._open.popitem(last=False)
                self._closing.append(oldest)
        self._open.move_to_end(address)
        # The async stub is a typing-only name: the generated class serves both.
        stub: Any = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
        return cast("vector_stores_pb2_grpc.VectorStoreServiceAsyncStub", stub)

    async def drop(self, address: str) -> None:
        channel = self._open.pop(address, None)
        if channel is not None:
            await channel.close(None)
        await self._close_evicted()

    async def _close_evicted(self) -> None:
        while self._closing:
            await self._closing.pop().close(None)

    @property
    def open_count(self) -> int:
        return len(self._open)

    async def close(self) -> None:
        for address in list(self._open):
            await self.drop(address)
        await self._close_evicted()


@dataclass(frozen=True)
class Forwarded:
    """The owner's answer to a forwarded search, and the replica that searched."""

    response: pb.SearchVectorStoreResponse
    served_by: str


class OwnerError(Exception):
    """The owner answered the forwarded search with an error: its status, message and
    trailing metadata (the google.rpc details among them), to be passed back as they are."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[Any, ...]) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailers = trailers


class SearchForwarder:
    def __init__(
        self,
        replicas: Replicas,
        channels: PeerChannels,
        timeout_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.replicas = replicas
        self.metrics = metrics
        self.channels = channels
        self.timeout_s = timeout_s
        self.forwarded = 0
        """Searches this replica forwarded and the owner answered (errors included)."""
        self.fallbacks = 0
        """Searches answered here because the owner could not be reached."""

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.search_forwards.labels(outcome).inc()

    def answered_here(self, context: Ctx) -> None:
        """The search is answered by this replica: say so in the trailing metadata."""
        context.set_trailing_metadata(((SERVED_BY, self.replicas.replica_id),))

    async def forward(
        self, store_id: str, request: pb.SearchVectorStoreRequest, context: Ctx
    ) -> pb.SearchVectorStoreResponse | None:
        """The owner's answer, or None when the search is to be answered here (this replica
        owns the store, the call was forwarded to it already, or the owner is unreachable).
        The owner's error aborts the call with the same status (AbortError)."""
        metadata = read_metadata(context)
        if FORWARDED_BY in metadata.values:
            return None  # one hop only
        try:
            answer = await self.ask_owner(
                store_id, request, metadata.values, context.time_remaining()
            )
        except OwnerError as exc:
            passed = tuple(
                (str(m[0]), m[1]) for m in exc.trailers or () if m[0] in (STATUS_DETAILS, SERVED_BY)
            )
            await context.abort(exc.code, exc.details, passed)
            raise AssertionError("unreachable: abort raises") from exc
        if answer is None:
            return None
        context.set_trailing_metadata(((SERVED_BY, answer.served_by),))
        return answer.response

    async def ask_owner(
        self,
        store_id: str,
        request: pb.SearchVectorStoreRequest,
        headers: Mapping[str, str],
        remaining: float | None,
    ) -> Forwarded | None:
        """Forwards the search to the store's owner when another live replica owns it:
        the owner's answer and who gave it, or None when the search is to be answered here
        (this replica owns the store, or the owner is unreachable: it is marked dead). The
        owner's error raises OwnerError. ``headers`` are the caller's (lower-case keys): its
        authorization, on-behalf-of and request id are passed on; ``remaining`` is the
        caller's time left (None: no deadline)."""
        route = self.replicas.route(store_id)
        if route.local:
            return None
        timeout = self.timeout_s if remaining is None else min(self.timeout_s, remaining)
        ours = remaining is None or self.timeout_s < remaining
        sent = [(k, headers[k]) for k in PASSED_ON if k in headers]
        sent += [(FORWARDED_BY, self.replicas.replica_id), (FORWARD_EPOCH, str(route.epoch))]
        address = route.owner.address
        call = self.channels.stub(address).SearchVectorStore(
            request, metadata=tuple(sent), timeout=timeout
        )
        try:
            response = await call
        except aio.AioRpcError as exc:
            code = exc.code()
            trailers: Any = exc.trailing_metadata()
            unreachable = code == grpc.StatusCode.UNAVAILABLE and _reason(trailers) in (
                None,
                NOT_SERVING,
            )
            if unreachable or (code == grpc.StatusCode.DEADLINE_EXCEEDED and ours):
                self.fallbacks += 1
                self._count("owner_unreachable")
                log.warning(
                    "the owner of %s did not answer (%s: %s): searching here",
                    store_id,
                    code.name,
                    exc.details(),
                    extra={"owner": route.owner.replica_id, "address": address},
                )
                self.replicas.mark_dead(route.owner.replica_id)
                await self.channels.drop(address)
                return None
            self.forwarded += 1
            self._count("forwarded")
            raise OwnerError(code, exc.details() or "", tuple(trailers or ())) from exc
        self.forwarded += 1
        self._count("forwarded")
        served = [m[1] for m in await call.trailing_metadata() or () if m[0] == SERVED_BY]
        return Forwarded(response, str(served[0]) if served else address)
