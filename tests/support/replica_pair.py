"""Two replicas in-process on port 0 that hold the same store: the fixture body of the
forwarding tests (tests/test_replicas.py over gRPC, tests/test_http_forwarding.py over HTTP).

Two servers cannot share one SQLite data directory (its lock), so each runs on its own copy
of one directory holding the same store, files and chunks (made by one server, then copied
while stopped), and each is told of the other the way it learns of replicas: by a heartbeat
row in its own ``replicas`` table. The owner of the store follows from rendezvous hashing.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from google.protobuf import struct_pb2
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.config import Settings
from quiver.server.core.ownership import Replica, owner_of
from quiver.server.storage.replica_rows import ReplicaRows

from tests.support.batch_helpers import create_batch, create_store, poll_batch, prose, upload_all
from tests.support.inproc import Tenant, _tenant, keyed


@dataclass
class Node:
    server: QuiverServer
    channel: aio.Channel
    alice: Tenant
    bob: Tenant
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
        """POST /v1/vector_stores/{store_id}/search on this node's HTTP listener."""
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
    alice = _tenant("alice", keys["alice"], channel)
    return Node(server, channel, alice, _tenant("bob", keys["bob"], channel), keys)


async def stop(node: Node) -> None:
    await node.channel.close(None)
    await node.server.stop(grace=1.0)


@dataclass
class Pair:
    store_id: str
    owner: Node
    other: Node


@asynccontextmanager
async def replica_pair(
    tmp_path: Path,
    *,
    http: bool = False,
    attributes: Mapping[str, struct_pb2.Value] | None = None,
) -> AsyncIterator[Pair]:
    """Two replicas on copies of one data directory holding a store of four files (each
    with ``attributes``), each heartbeating in the other's table: ``owner`` owns the store,
    ``other`` does not. ``http``: each also listens for HTTP."""
    base, keys = keyed(
        Settings(
            listen="127.0.0.1:0",
            http_listen="127.0.0.1:0" if http else "off",
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
        assert owner.server.core.replicas.route(store.id).local
        assert not other.server.core.replicas.route(store.id).local
        yield Pair(store.id, owner, other)
    finally:
        await stop(a)
        await stop(b)


def unused_address() -> str:
    """An address on which nothing listens (a port bound, then let go)."""
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
