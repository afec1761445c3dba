"""Several servers on one PostgreSQL database: a batch created through one is watched
through another (woken by LISTEN/NOTIFY, read from the table by sequence) with the same
final sequence, the same file changes and the same terminal message; and ``quiver serve
--database postgresql://...`` end to end (upload, batch, watch, search with ranker none)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio
from quiver.v1 import (
    file_batches_pb2,
    file_batches_pb2_grpc,
    files_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

from tests.support.batch_helpers import (
    B_COMPLETED,
    check_stream,
    create_batch,
    create_store,
    prose,
    read_to_end,
    start_watch,
    upload_all,
)
from tests.support.inproc import Tenant
from tests.support.pg_fixtures import pg_server, pg_url
from tests.support.pg_nodes import Node as Replica
from tests.support.pg_nodes import pg_nodes
from tests.support.serve import kill_quietly, start_serve, terminate, wait_serving

__all__ = ["pg_server", "pg_url"]


@pytest.fixture
async def replicas(tmp_path: Path, pg_url: str) -> AsyncIterator[list[Replica]]:
    """Two servers, each with its own data directory, on the same database and keys."""
    async with pg_nodes(tmp_path, pg_url, live=False) as two:
        yield two


def _changes(
    messages: list[file_batches_pb2.WatchFileBatchResponse],
) -> dict[str, int]:
    """The status each file was announced with (changes only)."""
    return {f.file_id: f.status for m in messages[1:] for f in m.files}


async def test_a_batch_made_on_one_server_is_watched_on_another(
    replicas: list[Replica],
) -> None:
    a, b = replicas
    store = await create_store(a.alice, name="shared")
    file_ids = await upload_all(
        a.alice, [(f"f{i}.txt", prose(i, 3000).encode()) for i in range(12)]
    )
    batch = await create_batch(a.alice, store.id, file_ids)
    here = start_watch(a.alice, store.id, batch.id)
    there = start_watch(b.alice, store.id, batch.id)
    on_a, on_b = await asyncio.gather(read_to_end(here, 120), read_to_end(there, 120))
    check_stream(on_a)
    check_stream(on_b)
    assert on_a[-1].sequence == on_b[-1].sequence == len(file_ids)
    assert on_a[-1].file_batch == on_b[-1].file_batch
    assert on_b[-1].file_batch.status == B_COMPLETED
    assert on_b[-1].file_batch.file_counts.completed == len(file_ids)
    if len(on_b) > 1:  # the snapshot may already have been terminal
        assert set(_changes(on_b)) <= set(file_ids)

    # Resuming on the other server from a sequence sends nothing older than asked for.
    middle = len(file_ids) // 2
    resumed = await read_to_end(start_watch(b.alice, store.id, batch.id, middle), 30)
    assert resumed[0].sequence == len(file_ids)
    assert len(resumed) == 1 and resumed[0].file_batch == on_a[-1].file_batch
    assert len(resumed[0].files) == len(file_ids) - middle


async def test_a_watch_on_another_server_hears_each_change(replicas: list[Replica]) -> None:
    """The watcher on B is open before the files complete on A: it gets change messages
    (not only a snapshot), woken by the notifications (or the poll)."""
    a, b = replicas
    store = await create_store(a.alice, name="slow")
    file_ids = await upload_all(
        a.alice, [(f"g{i}.txt", prose(50 + i, 2000).encode()) for i in range(6)]
    )
    # Held back: the batch is created in progress; B's watcher opens on its snapshot.
    await a.server.core.scheduler.stop()
    batch = await create_batch(a.alice, store.id, file_ids)
    there = start_watch(b.alice, store.id, batch.id)
    first = await there.read()
    assert isinstance(first, file_batches_pb2.WatchFileBatchResponse)
    assert first.sequence == 0 and first.file_batch.file_counts.in_progress == len(file_ids)
    a.server.core.scheduler.start(a.server.core.processing.process)
    rest = await read_to_end(there, 120)
    stream = [first, *rest]
    check_stream(stream)
    assert stream[-1].sequence == len(file_ids)
    assert set(_changes(stream)) == set(file_ids)


@pytest.mark.e2e
@pytest.mark.slow
async def test_quiver_serve_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    served = start_serve(tmp_path / "data", tmp_path / "serve.log", "--database", pg_url)
    try:
        await asyncio.to_thread(wait_serving, served, 60)
        channel = aio.insecure_channel(served.address)
        alice = Tenant(
            name="open",
            key="",
            files=files_pb2_grpc.FileServiceStub(channel),
            stores=vector_stores_pb2_grpc.VectorStoreServiceStub(channel),
            batches=file_batches_pb2_grpc.FileBatchServiceStub(channel),
            metadata=(),
        )
        try:
            store = await create_store(alice, name="e2e")
            texts = [
                "The archer's quiver was made of birch bark and leather.",
                "Sourdough bread needs a starter, flour, water and salt.",
                "A kayak paddle has two blades; a canoe paddle has one.",
            ]
            file_ids = await upload_all(
                alice, [(f"doc{i}.txt", t.encode()) for i, t in enumerate(texts)]
            )
            batch = await create_batch(alice, store.id, file_ids)
            messages = await read_to_end(start_watch(alice, store.id, batch.id), 60)
            check_stream(messages)
            assert messages[-1].file_batch.status == B_COMPLETED
            assert messages[-1].sequence == len(file_ids)
            reply = await alice.stores.SearchVectorStore(
                vector_stores_pb2.SearchVectorStoreRequest(
                    vector_store_id=store.id,
                    query=["birch bark quiver"],
                    max_num_results=3,
                    ranking_options=vector_stores_pb2.RankingOptions(ranker="none"),
                ),
                metadata=alice.metadata,
            )
            assert {r.file_id for r in reply.data} <= set(file_ids)
            assert reply.data and reply.data[0].file_id == file_ids[0]
        finally:
            await channel.close(None)
        assert await asyncio.to_thread(terminate, served) == 0
    finally:
        kill_quietly(served)
