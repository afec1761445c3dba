"""HTTP searches from any replica (http/search_forwarding.py over api/forwarding.py): real
servers in-process on port 0, each with its HTTP listener, searched through HTTP.

As in tests/test_replicas.py, two servers run on copies of one data directory holding the
same store (SQLite cannot be shared) and are told of each other by heartbeat rows; the owner
of the store follows from rendezvous hashing. The tests check who answered (the
``x-quiver-replica`` header), that the owner's answer is the one the caller gets, errors
included, and the fallback to answering here when the owner cannot be reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import struct_pb2
from quiver.v1 import vector_stores_pb2 as pb

from tests.support.replica_pair import Node, Pair, id_winning, replica_pair, unused_address

SERVED_BY = "x-quiver-replica"
QUERY = "the quiet river under the northern bridge"


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """Two replicas (HTTP on) holding one store of four files with attributes: ``owner``
    owns it, ``other`` does not."""
    attributes = {
        "kind": struct_pb2.Value(string_value="doc"),
        "n": struct_pb2.Value(number_value=2),
    }
    async with replica_pair(tmp_path, http=True, attributes=attributes) as two:
        yield two


def hits(response: httpx.Response) -> list[tuple[str, float, str, dict[str, Any]]]:
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["object"] == "vector_store.search_results.page"
    return [
        (h["file_id"], h["score"], h["content"][0]["text"], h["attributes"]) for h in page["data"]
    ]


async def grpc_hits(node: Node, store_id: str) -> list[tuple[str, float]]:
    reply = await node.alice.stores.SearchVectorStore(
        pb.SearchVectorStoreRequest(vector_store_id=store_id, query=[QUERY], max_num_results=8),
        metadata=node.alice.metadata,
        timeout=30,
    )
    return [(h.file_id, h.score) for h in reply.data]


async def test_an_http_search_on_any_replica_is_answered_by_the_owner(pair: Pair) -> None:
    body = {"query": QUERY, "max_num_results": 8}
    direct = await pair.owner.http_search(pair.store_id, body)
    assert direct.headers[SERVED_BY] == pair.owner.id
    assert pair.owner.server.forwarder.forwarded == 0
    through = await pair.other.http_search(pair.store_id, body, request_id="req-http-fwd-1")
    assert through.headers[SERVED_BY] == pair.owner.id  # one hop, to the owner
    assert through.headers["x-request-id"] == "req-http-fwd-1"
    assert hits(direct) and hits(through) == hits(direct)
    assert through.json()["search_query"] == [QUERY]
    assert hits(direct)[0][3] == {"kind": "doc", "n": 2.0}
    assert pair.other.server.forwarder.forwarded == 1
    assert pair.owner.server.forwarder.forwarded == 0
    # The same ids and scores as a gRPC search, from either replica.
    assert [(f, s) for f, s, _, _ in hits(direct)] == await grpc_hits(pair.other, pair.store_id)


async def test_filters_and_ranking_options_reach_the_owner_unchanged(pair: Pair) -> None:
    matching = {
        "type": "and",
        "filters": [
            {"type": "eq", "key": "kind", "value": "doc"},
            {"type": "in", "key": "n", "value": [1, 2, 3]},
            {"type": "or", "filters": [{"type": "gte", "key": "n", "value": 2}]},
        ],
    }
    # Past FILTER_BYTES_INLINE: converted on a thread, here and for the owner.
    values = [f"kind-{i:04d}-padding" for i in range(255)] + ["doc"]
    big = {"type": "in", "key": "kind", "value": values}
    cases = ((matching, True), ({"type": "ne", "key": "n", "value": 2}, False), (big, True))
    for filters, expect_hits in cases:
        body = {
            "query": [QUERY, "bridge"],
            "max_num_results": 5,
            "filters": filters,
            "ranking_options": {"ranker": "none", "score_threshold": 0.01},
        }
        direct = await pair.owner.http_search(pair.store_id, body)
        through = await pair.other.http_search(pair.store_id, body)
        assert through.headers[SERVED_BY] == pair.owner.id
        assert hits(through) == hits(direct)
        assert bool(hits(direct)) is expect_hits
        assert through.json()["search_query"] == [QUERY, "bridge"]
    assert pair.other.server.forwarder.forwarded == 3


async def test_the_owner_answers_another_tenant_as_it_would_directly(pair: Pair) -> None:
    body = {"query": QUERY}
    direct = await pair.owner.http_search(pair.store_id, body, tenant="bob")
    through = await pair.other.http_search(pair.store_id, body, tenant="bob")
    assert direct.status_code == through.status_code == 404
    assert through.json() == direct.json()
    assert pair.other.server.forwarder.forwarded == 1


async def test_a_bad_request_is_refused_here_and_never_forwarded(pair: Pair) -> None:
    response = await pair.other.http_search(pair.store_id, {"query": QUERY, "max_num_results": 99})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_num_results"
    assert pair.other.server.forwarder.forwarded == 0


async def test_an_unreachable_owner_is_marked_dead_and_the_search_answered_here(
    pair: Pair,
) -> None:
    body = {"query": QUERY, "max_num_results": 8}
    direct = await pair.owner.http_search(pair.store_id, body)
    ghost = id_winning(pair.store_id, [pair.owner.id, pair.other.id], "ghost")
    await pair.other.hear_of(ghost, unused_address())
    replicas = pair.other.server.core.replicas
    assert replicas.route(pair.store_id).owner.replica_id == ghost
    here = await pair.other.http_search(pair.store_id, body)
    assert here.headers[SERVED_BY] == pair.other.id
    assert hits(here) == hits(direct)
    assert pair.other.server.forwarder.fallbacks == 1
    assert ghost not in [r.replica_id for r in replicas.view.replicas]
    # The owner is back in the view: the next search goes there again.
    again = await pair.other.http_search(pair.store_id, body)
    assert again.headers[SERVED_BY] == pair.owner.id
    assert hits(again) == hits(direct)
