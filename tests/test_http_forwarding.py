"""HTTP searches from any replica (http/search_forwarding.py over api/forwarding.py): real
servers in-process on port 0, each with its HTTP listener, searched through HTTP.

As in tests/test_replicas.py, two servers run on copies of one data directory holding the
same store (SQLite cannot be shared) and are told of each other by heartbeat rows; the owner
of the store follows from rendezvous hashing. The tests check who answered (the
``x-quiver-replica`` header), that the owner's answer is the one the caller gets, errors
included, and the fallback to answering here when the owner cannot be reached.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.config import Settings
from quiver.server.core.ownership import Replica, owner_of
from quiver.server.storage.replica_rows import ReplicaRows
from quiver.v1 import vector_stores_pb2 as pb

from tests.support.batch_helpers import create_batch, create_store, poll_batch, prose, upload_all
from tests.support.inproc import Tenant, _tenant, keyed

SERVED_BY = "x-quiver-replica"
QUERY = "the quiet river under the northern bridge"


@dataclass
class Node:
    server: QuiverServer
    channel: aio.Channel
    alice: Tenant
    keys: dict[str, str]

    @property
    def id(self) -> str:
        return self.server.core.replicas.replica_id

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def hear_of(self, replica_id: str, address: str) -> None:
        """A heartbeat row for ``replica_id`` in this node's database, then a refresh."""
        rows = ReplicaRows(self.server.core.db)
        await asyncio.to_thread(rows.beat, replica_id, address, time.time())
        await self.server.core.replicas.refresh()

    async def http_search(
        self, store_id: str, body: dict[str, Any], tenant: str = "alice", request_id: str = ""
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.keys[tenant]}"}
        if request_id:
            headers["x-request-id"] = request_id
        url = f"http://127.0.0.1:{self.server.http_port}/v1/vector_stores/{store_id}/search"
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(url, json=body, headers=headers)


async def start(settings: Settings, keys: dict[str, str]) -> Node:
    server = QuiverServer(settings)
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    return Node(server, channel, _tenant("alice", keys["alice"], channel), keys)


async def stop(node: Node) -> None:
    await node.channel.close(None)
    await node.server.stop(grace=1.0)


@dataclass
class Pair:
    store_id: str
    owner: Node
    other: Node


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """Two replicas (HTTP on) on copies of one data directory holding a store of four files
    with attributes, each heartbeating in the other's table: ``owner`` owns the store."""
    base, keys = keyed(
        Settings(
            listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            data_dir=tmp_path / "a",
            ingest_workers=1,
            replica_heartbeat_seconds=0.2,
            replica_timeout_seconds=60.0,  # the rows the tests write stay live meanwhile
        )
    )
    first = await start(base, keys)
    try:
        store = await create_store(first.alice, name="shared")
        ids = await upload_all(
            first.alice, [(f"doc{i}.txt", prose(i, 3000).encode()) for i in range(4)]
        )
        attributes = {
            "kind": struct_pb2.Value(string_value="doc"),
            "n": struct_pb2.Value(number_value=2),
        }
        batch = await create_batch(first.alice, store.id, ids, attributes=attributes)
        assert (await poll_batch(first.alice, store.id, batch.id)).file_counts.completed == 4
    finally:
        await stop(first)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a = await start(base, keys)
    b = await start(replace(base, data_dir=tmp_path / "b"), keys)
    try:
        await a.hear_of(b.id, b.address)
        await b.hear_of(a.id, a.address)
        found = owner_of(store.id, [Replica(a.id, ""), Replica(b.id, "")])
        assert found is not None
        owner, other = (a, b) if found.replica_id == a.id else (b, a)
        assert not other.server.core.replicas.route(store.id).local
        yield Pair(store.id, owner, other)
    finally:
        await stop(a)
        await stop(b)


def hits(response: httpx.Response) -> list[tuple[str, float, str, dict[str, Any]]]:
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["object"] == "vector_store.search_results.page"
    return [
        (h["file_id"], h["score"], h["content"][0]["text"], h["attributes"]) for h in page["data"]
    ]


def unused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def id_winning(store_id: str, others: list[str], prefix: str) -> str:
    """A replica id that would own ``store_id`` among ``others``."""
    for n in itertools.count():
        candidate = f"{prefix}-{n}"
        found = owner_of(store_id, [Replica(r, "") for r in [*others, candidate]])
        if found is not None and found.replica_id == candidate:
            return candidate
    raise AssertionError("unreachable")


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
