"""HTTP searches of a store another live replica owns, answered by the owner: the validated
search becomes a SearchVectorStoreRequest sent through the gRPC edge's SearchForwarder (same
credentials, on-behalf-of and request id passed on, one hop, the same fallback to answering
here when the owner cannot be reached), and its answer becomes the HTTP page again. The
replica that searched is named in the ``x-quiver-replica`` response header."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from quiver.server.api.convert import python_to_value, value_to_python
from quiver.server.api.forwarding import SERVED_BY, OwnerError, SearchForwarder
from quiver.server.api.owner_errors import core_error_of
from quiver.server.core.filters import Comparison, Filter
from quiver.server.core.models import AttributeValue
from quiver.server.core.search import SearchRequest
from quiver.v1 import vector_stores_pb2 as pb

Json = dict[str, Any]
REPLICA_HEADER = SERVED_BY


@dataclass(frozen=True)
class OwnerAnswer:
    """The owner's search results as the HTTP edge writes them, and who searched."""

    search_query: list[str]
    data: list[Json]
    served_by: str


def _value(value: AttributeValue | tuple[AttributeValue, ...]) -> struct_pb2.Value:
    if isinstance(value, tuple):
        return struct_pb2.Value(
            list_value=struct_pb2.ListValue(values=[python_to_value(v) for v in value])
        )
    return python_to_value(value)


def filter_out(filter: Filter) -> pb.Filter:
    """A parsed filter as the gRPC message (the owner parses it again to the same filter)."""
    if isinstance(filter, Comparison):
        return pb.Filter(type=filter.op, key=filter.key, value=_value(filter.value))
    return pb.Filter(type=filter.op, filters=[filter_out(f) for f in filter.filters])


def request_out(
    store_id: str, search: SearchRequest, ranker: str, rewrite_query: bool
) -> pb.SearchVectorStoreRequest:
    """The checked search as the gRPC request; ``ranker`` as the caller named it."""
    request = pb.SearchVectorStoreRequest(
        vector_store_id=store_id,
        query=search.queries,
        max_num_results=search.max_results,
        ranking_options=pb.RankingOptions(ranker=ranker, score_threshold=search.score_threshold),
        rewrite_query=rewrite_query,
    )
    if search.filter is not None:
        request.filters.CopyFrom(filter_out(search.filter))
    return request


def hit_out(result: pb.SearchResult) -> Json:
    """One owner's result in the HTTP edge's shape (http/convert.hit_out)."""
    return {
        "file_id": result.file_id,
        "filename": result.filename,
        "score": result.score,
        "attributes": {k: value_to_python(v) for k, v in result.attributes.items()},
        "content": [{"type": c.type, "text": c.text} for c in result.content],
    }


class HttpSearchForwarding:
    """The HTTP edge's side of search forwarding (api/forwarding.SearchForwarder)."""

    def __init__(self, forwarder: SearchForwarder) -> None:
        self.forwarder = forwarder

    @property
    def replica_id(self) -> str:
        return self.forwarder.replicas.replica_id

    async def ask_owner(
        self,
        store_id: str,
        search: SearchRequest,
        ranker: str,
        rewrite_query: bool,
        headers: Mapping[str, str],
        *,
        big: bool = False,
    ) -> OwnerAnswer | None:
        """The owner's answer, or None when this replica is to answer (it owns the store, or
        the owner cannot be reached). The owner's error raises as the core error it was.
        ``big``: the request is converted on a thread (a filter of up to 256 nodes of
        256-value lists is tens of milliseconds of Python)."""
        if self.forwarder.replicas.route(store_id).local:
            return None  # nothing to convert
        if big:
            request = await asyncio.to_thread(request_out, store_id, search, ranker, rewrite_query)
        else:
            request = request_out(store_id, search, ranker, rewrite_query)
        try:
            answer = await self.forwarder.ask_owner(store_id, request, headers, None)
        except OwnerError as exc:
            raise core_error_of(exc) from None
        if answer is None:
            return None
        response = answer.response
        return OwnerAnswer(
            list(response.search_query), [hit_out(r) for r in response.data], answer.served_by
        )
