"""A store's caches (vector index and file, keyword index and directory, attribute index
entry) go with it, through ``core/store_drops.py``, on a single server (SQLite): at once
when the store is deleted, and, for a store whose row went without them, at the next
``drop_deleted``, which never drops a store that exists.

Deletion through another replica sharing the database: tests/test_pg_replica_caches.py.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from quiver.server.core.root import Core
from quiver.v1 import vector_stores_pb2

from tests.support.batch_helpers import create_batch, create_store, poll_batch, prose, upload_all
from tests.support.inproc import Running, Tenant
from tests.support.rpc_helpers import rpc_error

SEARCHES = (("none", None), ("auto", None), ("none", "gold"))
"""Plain, hybrid (keyword index too) and filtered (attribute index too)."""


async def search(tenant: Tenant, store_id: str, ranker: str, tier: str | None) -> int:
    filters = (
        None
        if tier is None
        else vector_stores_pb2.Filter(
            type="eq", key="tier", value=struct_pb2.Value(string_value=tier)
        )
    )
    reply = await tenant.stores.SearchVectorStore(
        vector_stores_pb2.SearchVectorStoreRequest(
            vector_store_id=store_id,
            query=["river bridge"],
            max_num_results=10,
            filters=filters,
            ranking_options=vector_stores_pb2.RankingOptions(ranker=ranker),
        ),
        metadata=tenant.metadata,
        timeout=30,
    )
    return len(reply.data)


def held(core: Core, store_id: str) -> list[str]:
    out = []
    if core.indexes.path_for(store_id).exists():
        out.append("vector index file")
    if store_id in core.indexes.stores_held():
        out.append("vector index")
    if core.keywords.path_for(store_id).exists():
        out.append("keyword index directory")
    if store_id in core.keywords.stores_held():
        out.append("keyword index")
    if store_id in core.attributes.cached_store_ids():
        out.append("attribute index entry")
    return out


EVERY_CACHE = [
    "vector index file",
    "vector index",
    "keyword index directory",
    "keyword index",
    "attribute index entry",
]


async def searched_store(running: Running, name: str, seed: int) -> str:
    """A store of completed files, searched every way, its index saved: every cache held."""
    alice = running.alice
    store = await create_store(alice, name=name)
    ids = await upload_all(
        alice, [(f"{name}{i}.txt", prose(seed + i, 1200).encode()) for i in range(3)]
    )
    gold = {"tier": struct_pb2.Value(string_value="gold")}
    batch = await create_batch(alice, store.id, ids, attributes=gold)
    assert (await poll_batch(alice, store.id, batch.id)).file_counts.completed == 3
    for ranker, tier in SEARCHES:
        assert await search(alice, store.id, ranker, tier) > 0
    core = running.server.core
    await asyncio.to_thread(core.indexes.save_all)
    assert held(core, store.id) == EVERY_CACHE
    return store.id


async def assert_not_found(tenant: Tenant, store_id: str) -> None:
    for ranker, tier in SEARCHES:
        with pytest.raises(aio.AioRpcError) as caught:
            await search(tenant, store_id, ranker, tier)
        assert rpc_error(caught.value).code() == grpc.StatusCode.NOT_FOUND


async def test_deleting_a_store_drops_every_cache_of_it_at_once(running: Running) -> None:
    core = running.server.core
    kept = await searched_store(running, "kept", 10)
    gone = await searched_store(running, "gone", 20)
    vectors = core.indexes.live_vectors()
    reply = await running.alice.stores.DeleteVectorStore(
        vector_stores_pb2.DeleteVectorStoreRequest(vector_store_id=gone),
        metadata=running.alice.metadata,
    )
    assert reply.deleted
    assert held(core, gone) == []
    assert core.drops.is_dropped(gone)
    assert 0 < core.indexes.live_vectors() < vectors
    await assert_not_found(running.alice, gone)
    assert await core.drops.drop_deleted() == []  # nothing more to drop
    assert held(core, kept) == EVERY_CACHE
    assert not core.drops.is_dropped(kept)


async def test_caches_of_a_store_whose_row_went_without_them_are_dropped(
    running: Running,
) -> None:
    """As when another server deleted it: the row is gone, the caches are still here."""
    core = running.server.core
    kept = await searched_store(running, "kept", 30)
    gone = await searched_store(running, "gone", 40)
    with core.storage.transaction() as tx:
        core.storage.stores.delete(tx, gone)
    assert held(core, gone) == EVERY_CACHE
    assert await core.drops.drop_deleted() == [gone]
    assert held(core, gone) == []
    await assert_not_found(running.alice, gone)
    assert await core.drops.drop_deleted() == []  # idempotent
    assert held(core, kept) == EVERY_CACHE
    for ranker, tier in SEARCHES:
        assert await search(running.alice, kept, ranker, tier) > 0


async def test_a_failed_search_tells_a_deleted_store_from_one_that_exists(
    running: Running,
) -> None:
    """``gone``, asked when a search failed: true (and the caches dropped) only for a store
    whose row is gone."""
    core = running.server.core
    kept = await searched_store(running, "kept", 50)
    gone = await searched_store(running, "gone", 60)
    with core.storage.transaction() as tx:
        core.storage.stores.delete(tx, gone)
    assert not await core.drops.gone(kept)
    assert held(core, kept) == EVERY_CACHE
    assert await core.drops.gone(gone)
    assert held(core, gone) == []
    assert core.drops.is_dropped(gone)
    assert await core.drops.gone(gone)  # remembered: no read, nothing more to drop
    assert held(core, kept) == EVERY_CACHE
