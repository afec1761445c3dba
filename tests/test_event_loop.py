"""Heavy work of one tenant must not freeze the server for everyone else (issue 9 item 1).

While alice runs a heavy operation, a prober asks health and bob's GetVectorStore every
50 ms. The bound asserted (1 s) is far from both sides: the server answers these in a few
milliseconds when idle, and the code before the fix left them waiting for the whole
operation (a filtered search of 2,000 files: ~19 s on a quiet machine; a 4 MB file's
commit: several seconds; deleting its store: seconds).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from quiver.v1 import vector_stores_pb2

from bench.loop_latency import (
    Caller,
    Probe,
    big_text,
    create_store,
    filtered_search,
    ingest,
    probe_while,
    store_of_small_files,
    upload,
)
from tests.batch_helpers import open_db
from tests.conftest import Running, Tenant

BOUND = 1.0


def caller(tenant: Tenant) -> Caller:
    return Caller(tenant.files, tenant.stores, tenant.batches, tenant.metadata)


def check(case: str, probe: Probe, seconds: float) -> None:
    figures = probe.summary()
    print(f"\n{case}: took {seconds:.2f} s; {figures}")
    assert figures["probes"] >= 2
    assert max(probe.health) < BOUND, f"health waited {max(probe.health):.2f} s during {case}"
    assert max(probe.other) < BOUND, f"bob waited {max(probe.other):.2f} s during {case}"


@pytest.mark.timeout(600)
async def test_a_heavy_filter_does_not_block_other_callers(running: Running) -> None:
    alice, bob = caller(running.alice), caller(running.bob)
    bobs = await create_store(bob, "bob's")
    started = time.perf_counter()
    store = await store_of_small_files(alice, 2000)
    print(f"\n2,000 files stored in {time.perf_counter() - started:.1f} s")
    probe, seconds = await probe_while(filtered_search(alice, store, 1), running.target, bob, bobs)
    check("filtered search of 2,000 files", probe, seconds)
    assert await filtered_search(alice, store, 1) == 10  # every file matches


@pytest.mark.timeout(600)
async def test_a_large_file_and_deleting_its_store_do_not_block_other_callers(
    running: Running,
) -> None:
    alice, bob = caller(running.alice), caller(running.bob)
    bobs = await create_store(bob, "bob's")
    store = await create_store(alice, "one big file")
    file_id = await upload(alice, "big.txt", big_text(4))
    probe, seconds = await probe_while(ingest(alice, store, [file_id]), running.target, bob, bobs)
    check("ingest of a 4 MB file", probe, seconds)
    with open_db(running.server.settings.data_dir) as db:
        chunks = db.execute("SELECT COUNT(*) FROM chunks WHERE vector_store_id = ?", (store,))
        assert chunks.fetchone()[0] > 1000

    delete = alice.stores.DeleteVectorStore(
        vector_stores_pb2.DeleteVectorStoreRequest(vector_store_id=store),
        metadata=alice.metadata,
    )
    probe, seconds = await probe_while(delete, running.target, bob, bobs)
    check("deleting that store", probe, seconds)
    with open_db(running.server.settings.data_dir) as db:
        left = db.execute("SELECT COUNT(*) FROM chunks WHERE vector_store_id = ?", (store,))
        assert left.fetchone()[0] == 0  # gone by the time the RPC answered


async def test_chunks_in_the_index_before_their_file_completes_are_not_searched(
    running: Running,
) -> None:
    """The commit adds a file's vectors to the index before the file is ``completed``
    (``PendingLabels`` marks them meanwhile): an unfiltered search skips them rather than
    letting them take places among the k nearest and then dropping them."""
    alice = caller(running.alice)
    store = await create_store(alice, "pending")
    ids = [await upload(alice, f"f{i}.txt", f"quiver arrow number {i}".encode()) for i in range(3)]
    await ingest(alice, store, ids)
    request = vector_stores_pb2.SearchVectorStoreRequest(
        vector_store_id=store,
        query=["quiver arrow"],
        ranking_options=vector_stores_pb2.RankingOptions(ranker="none"),
    )
    before = await alice.stores.SearchVectorStore(request, metadata=alice.metadata)
    assert len(before.data) == 3
    with open_db(running.server.settings.data_dir) as db:
        rows = db.execute(
            "SELECT id FROM chunks WHERE vector_store_id = ? AND file_id = ?", (store, ids[0])
        ).fetchall()
    labels = np.asarray([r[0] for r in rows], dtype=np.int64)
    pending = running.server.core.pending
    pending.add(store, labels)
    hidden = await alice.stores.SearchVectorStore(request, metadata=alice.metadata)
    pending.discard(store, labels)
    assert sorted(hit.file_id for hit in hidden.data) == sorted(ids[1:])
    index = running.server.core.indexes.get(store, running.server.settings.embedding_dimensions)
    assert index.live_count == 3  # still in the index: only searches skip them
