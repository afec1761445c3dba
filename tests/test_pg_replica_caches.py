"""Two servers on one PostgreSQL database, in-process on port 0: what one replica changes,
the other's caches and watchers follow at once.

- Filters: a file's attributes updated (or the file detached) through one replica change
  the very next filtered search, through either replica, though the owner of the store had
  a selection cached (core/index_sync.sync_files feeding core/attribute_index.py).
- Watchers: a batch deleted with its store through one replica ends, on the other
  replica's watchers, with the same terminal message as on the deleting replica's own
  (core/shared_watch.py: the batch's rows are gone, so that message is made from what was
  read of the batch before).
- Caches: a store deleted through one replica leaves nothing of it on the other (its vector
  index and file, keyword index and directory, attribute index entry) within a few seconds
  (core/shared_watch.py checking the stores held, core/store_drops.py dropping them), and a
  search racing with that drop answers NOT_FOUND, never INTERNAL.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from quiver.v1 import file_batches_pb2, vector_stores_pb2

from tests.support.batch_helpers import (
    B_FAILED,
    F_FAILED,
    WatchCall,
    check_stream,
    create_batch,
    create_store,
    final_statuses,
    poll_batch,
    prose,
    read_message,
    read_to_end,
    start_watch,
    upload_all,
)
from tests.support.pg_fixtures import pg_server, pg_url
from tests.support.pg_nodes import Node, pg_nodes
from tests.support.rpc_helpers import rpc_error, wait_for

__all__ = ["pg_server", "pg_url"]

SERVED_BY = "x-quiver-replica"


@pytest.fixture
async def nodes(tmp_path: Path, pg_url: str) -> AsyncIterator[list[Node]]:
    """Two servers, each with its own data directory, on the same database and keys, each
    seeing the other live."""
    async with pg_nodes(tmp_path, pg_url) as two:
        yield two


async def filtered(node: Node, store_id: str, tier: str) -> tuple[list[str], str]:
    """The files a search filtered on ``tier`` finds, and the replica that searched."""
    call = node.alice.stores.SearchVectorStore(
        vector_stores_pb2.SearchVectorStoreRequest(
            vector_store_id=store_id,
            query=["river bridge"],
            max_num_results=20,
            filters=vector_stores_pb2.Filter(
                type="eq", key="tier", value=struct_pb2.Value(string_value=tier)
            ),
            ranking_options=vector_stores_pb2.RankingOptions(ranker="none"),
        ),
        metadata=node.alice.metadata,
        timeout=30,
    )
    reply = await call
    served = [v for k, v in await call.trailing_metadata() or () if k == SERVED_BY]
    return sorted({h.file_id for h in reply.data}), str(served[0]) if served else ""


async def set_tier(node: Node, store_id: str, file_id: str, tier: str) -> None:
    await node.alice.stores.UpdateVectorStoreFile(
        vector_stores_pb2.UpdateVectorStoreFileRequest(
            vector_store_id=store_id,
            file_id=file_id,
            attributes={"tier": struct_pb2.Value(string_value=tier)},
        ),
        metadata=node.alice.metadata,
    )


async def test_filtered_searches_read_attribute_writes_made_on_another_replica(
    nodes: list[Node],
) -> None:
    a, b = nodes
    store = await create_store(a.alice, name="tiers")
    ids = await upload_all(a.alice, [(f"t{i}.txt", prose(70 + i, 1500).encode()) for i in range(4)])
    gold = {"tier": struct_pb2.Value(string_value="gold")}
    batch = await create_batch(a.alice, store.id, ids[:2], attributes=gold)
    assert (await poll_batch(a.alice, store.id, batch.id)).file_counts.completed == 2
    silver = {"tier": struct_pb2.Value(string_value="silver")}
    batch = await create_batch(a.alice, store.id, ids[2:], attributes=silver)
    assert (await poll_batch(a.alice, store.id, batch.id)).file_counts.completed == 2
    owner = a if a.server.core.replicas.route(store.id).local else b
    other = b if owner is a else a
    assert not other.server.core.replicas.route(store.id).local
    for node in (owner, other):  # the owner's selection for "gold" is cached from here on
        assert await filtered(node, store.id, "gold") == (sorted(ids[:2]), owner.id)
    # Written through the replica that does not own the store: its attribute index is not
    # the owner's, which only the database tells.
    await set_tier(other, store.id, ids[2], "gold")
    for node in (owner, other):
        assert await filtered(node, store.id, "gold") == (sorted(ids[:3]), owner.id)
    await set_tier(other, store.id, ids[0], "bronze")
    for node in (other, owner):
        assert await filtered(node, store.id, "gold") == (sorted(ids[1:3]), owner.id)
    await other.alice.stores.DeleteVectorStoreFile(
        vector_stores_pb2.DeleteVectorStoreFileRequest(vector_store_id=store.id, file_id=ids[1]),
        metadata=other.alice.metadata,
    )
    for node in (owner, other):
        assert await filtered(node, store.id, "gold") == ([ids[2]], owner.id)


Message = file_batches_pb2.WatchFileBatchResponse


async def _next(call: WatchCall) -> Message:
    message = await read_message(call)
    assert message is not None, "the watch ended early"
    return message


async def _read_until(
    call: WatchCall, done: Callable[[Message], bool], within: float = 60.0
) -> list[Message]:
    """Messages of a watch until ``done(message)`` holds."""
    out: list[Message] = []
    deadline = time.monotonic() + within
    while True:
        message = await read_message(call, within=max(0.1, deadline - time.monotonic()))
        assert message is not None, "the watch ended early"
        out.append(message)
        if done(message):
            return out


async def test_watchers_on_every_replica_end_alike_when_the_store_is_deleted(
    nodes: list[Node],
) -> None:
    a, b = nodes
    for node in nodes:  # nothing runs until the watchers follow
        await node.server.core.scheduler.stop()
    store = await create_store(a.alice, name="doomed")
    ids = await upload_all(a.alice, [(f"d{i}.txt", prose(90 + i, 800).encode()) for i in range(6)])
    batch = await create_batch(a.alice, store.id, ids)
    here = start_watch(a.alice, store.id, batch.id)
    there = start_watch(b.alice, store.id, batch.id)
    firsts = [await _next(here), await _next(there)]
    assert all(m.file_batch.file_counts.in_progress == 6 for m in firsts)
    # Some files complete (on A), then processing stops with the others still in progress.
    a.server.core.scheduler.start(a.server.core.processing.process)
    seen_there = await _read_until(there, lambda m: m.file_batch.file_counts.completed >= 2)
    await a.server.core.scheduler.stop()
    await asyncio.sleep(1.5)  # B has heard every change (woken by each, polled each second)
    deleted = await a.alice.stores.DeleteVectorStore(
        vector_stores_pb2.DeleteVectorStoreRequest(vector_store_id=store.id),
        metadata=a.alice.metadata,
    )
    assert deleted.deleted
    on_a = [firsts[0], *await read_to_end(here, 30)]
    on_b = [firsts[1], *seen_there, *await read_to_end(there, 30)]
    check_stream(on_a)
    check_stream(on_b)
    assert on_b[-1].file_batch.status == B_FAILED
    assert on_b[-1].file_batch.file_counts.in_progress == 0
    assert on_b[-1].sequence == on_a[-1].sequence
    assert on_b[-1].file_batch == on_a[-1].file_batch
    assert on_b[-1].type == on_a[-1].type
    ended_a, ended_b = final_statuses(on_a), final_statuses(on_b)
    assert ended_b == ended_a
    assert sorted(ended_b) == sorted(ids)
    unfinished = [u for u in ended_b.values() if u.status == F_FAILED]
    assert unfinished, "every file completed before the store was deleted"
    assert all("deleted" in u.last_error.message for u in unfinished)
    completed = on_b[-1].file_batch.file_counts.completed
    assert len(unfinished) == 6 - completed


async def search(node: Node, store_id: str, *, ranker: str, tier: str | None = None) -> int:
    """How many hits a search of the store through ``node`` finds."""
    filters = (
        None
        if tier is None
        else vector_stores_pb2.Filter(
            type="eq", key="tier", value=struct_pb2.Value(string_value=tier)
        )
    )
    reply = await node.alice.stores.SearchVectorStore(
        vector_stores_pb2.SearchVectorStoreRequest(
            vector_store_id=store_id,
            query=["river bridge"],
            max_num_results=10,
            filters=filters,
            ranking_options=vector_stores_pb2.RankingOptions(ranker=ranker),
        ),
        metadata=node.alice.metadata,
        timeout=30,
    )
    return len(reply.data)


def held_here(node: Node, store_id: str) -> list[str]:
    """What ``node`` holds of the store: files on disk and caches in memory."""
    core = node.server.core
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


async def searched_store(a: Node) -> tuple[str, list[str]]:
    """A store of completed files (with a tier attribute) made through ``a``."""
    store = await create_store(a.alice, name="dropped")
    ids = await upload_all(a.alice, [(f"s{i}.txt", prose(30 + i, 1500).encode()) for i in range(4)])
    gold = {"tier": struct_pb2.Value(string_value="gold")}
    batch = await create_batch(a.alice, store.id, ids, attributes=gold)
    assert (await poll_batch(a.alice, store.id, batch.id)).file_counts.completed == 4
    return store.id, ids


async def test_a_store_deleted_through_another_replica_leaves_no_cache_on_its_owner(
    nodes: list[Node],
) -> None:
    a, b = nodes
    store_id, _ = await searched_store(a)
    owner = a if a.server.core.replicas.route(store_id).local else b
    deleter = b if owner is a else a
    # Every cache of the store on its owner: vector, keyword (auto: hybrid), filtered.
    assert await search(owner, store_id, ranker="none") > 0
    assert await search(owner, store_id, ranker="auto") > 0
    assert await search(owner, store_id, ranker="none", tier="gold") > 0
    await asyncio.to_thread(owner.server.core.indexes.save_all)  # as the periodic save does
    assert held_here(owner, store_id) == [
        "vector index file",
        "vector index",
        "keyword index directory",
        "keyword index",
        "attribute index entry",
    ]
    assert owner.server.core.indexes.live_vectors() > 0
    held = held_here(owner, store_id)
    for node in nodes:  # a store that exists is never dropped
        assert await node.server.core.drops.drop_deleted() == []
    assert held_here(owner, store_id) == held

    deleted = await deleter.alice.stores.DeleteVectorStore(
        vector_stores_pb2.DeleteVectorStoreRequest(vector_store_id=store_id),
        metadata=deleter.alice.metadata,
    )
    assert deleted.deleted
    started = time.monotonic()
    await wait_for(lambda: not held_here(owner, store_id), within=5)
    took = time.monotonic() - started
    assert owner.server.core.indexes.live_vectors() == 0  # quiver_index_vectors
    assert owner.server.core.indexes.open_count == 0  # quiver_indexes_open
    assert owner.server.core.drops.is_dropped(store_id)
    for node in nodes:  # neither holds anything of it, and a search answers NOT_FOUND
        assert held_here(node, store_id) == []
        for ranker, tier in (("none", None), ("auto", None), ("none", "gold")):
            with pytest.raises(aio.AioRpcError) as caught:
                await search(node, store_id, ranker=ranker, tier=tier)
            assert rpc_error(caught.value).code() == grpc.StatusCode.NOT_FOUND
        # Idempotent: checking again (the deleting replica too) drops nothing more.
        assert await node.server.core.drops.drop_deleted() == []
        assert held_here(node, store_id) == []
    assert took < 5


async def test_searches_racing_with_the_drop_answer_results_or_not_found(
    nodes: list[Node],
) -> None:
    a, b = nodes
    store_id, _ = await searched_store(a)
    owner = a if a.server.core.replicas.route(store_id).local else b
    deleter = b if owner is a else a
    codes: list[grpc.StatusCode] = []
    stop = asyncio.Event()

    async def keep_searching(ranker: str, tier: str | None) -> None:
        while not stop.is_set():
            try:
                await search(owner, store_id, ranker=ranker, tier=tier)
                codes.append(grpc.StatusCode.OK)
            except aio.AioRpcError as exc:
                codes.append(exc.code())
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return

    searchers = [
        asyncio.create_task(keep_searching(ranker, tier))
        for ranker, tier in (("none", None), ("auto", None), ("none", "gold")) * 2
    ]
    await wait_for(lambda: len(codes) >= 6, within=30)
    await deleter.alice.stores.DeleteVectorStore(
        vector_stores_pb2.DeleteVectorStoreRequest(vector_store_id=store_id),
        metadata=deleter.alice.metadata,
    )
    await wait_for(lambda: not held_here(owner, store_id), within=5)
    stop.set()
    await asyncio.gather(*searchers)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}, codes
    assert grpc.StatusCode.NOT_FOUND in codes
    # Whatever a racing search opened again was dropped too.
    await wait_for(lambda: not held_here(owner, store_id), within=5)


async def test_a_search_caught_by_the_drop_answers_not_found_and_keeps_nothing(
    nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search that read the store's row before the deletion and reaches its caches only
    after the drop (it opens them again): NOT_FOUND, and what it opened is dropped."""
    a, b = nodes
    store_id, _ = await searched_store(a)
    owner = a if a.server.core.replicas.route(store_id).local else b
    deleter = b if owner is a else a
    assert await search(owner, store_id, ranker="auto", tier="gold") > 0  # caches held
    searcher = owner.server.core.searcher
    entered, go_on = threading.Event(), threading.Event()
    embedder_for = searcher.embedder_for

    def paused(model: str, dim: int, sent: bool) -> object:  # on a thread, after the row
        entered.set()
        go_on.wait(30)
        return embedder_for(model, dim, sent)

    monkeypatch.setattr(searcher, "embedder_for", paused)
    caught = asyncio.create_task(search(owner, store_id, ranker="auto", tier="gold"))
    try:
        await wait_for(entered.is_set, within=30)
        await deleter.alice.stores.DeleteVectorStore(
            vector_stores_pb2.DeleteVectorStoreRequest(vector_store_id=store_id),
            metadata=deleter.alice.metadata,
        )
        await wait_for(lambda: owner.server.core.drops.is_dropped(store_id), within=5)
        await wait_for(lambda: not held_here(owner, store_id), within=5)
    finally:
        go_on.set()
    with pytest.raises(aio.AioRpcError) as error:
        await caught
    assert rpc_error(error.value).code() == grpc.StatusCode.NOT_FOUND
    assert held_here(owner, store_id) == []
    assert owner.server.core.indexes.live_vectors() == 0
