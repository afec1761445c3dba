"""A damaged index file never crashes or blocks `quiver serve`: it is refused before hnswlib
reads it and rebuilt from SQLite, and searches answer as they did before the damage."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from grpc import aio
from quiver.v1 import vector_stores_pb2

from tests.batch_helpers import (
    B_COMPLETED,
    create_batch,
    create_store,
    prose,
    upload_all,
    watch_to_end,
)
from tests.conftest import Tenant
from tests.test_index import DAMAGE
from tests.test_recovery import (  # noqa: F401 - `processes` is a fixture
    ServeProcess,
    free_port,
    open_tenant,
    processes,
    wait_serving,
)

QUERIES = ["river stone", "quiet morning light", "north wind over the hills"]

Results = list[list[tuple[str, float, str]]]


async def search_all(t: Tenant, store_id: str) -> Results:
    out: Results = []
    for query in QUERIES:
        reply = await t.stores.SearchVectorStore(
            vector_stores_pb2.SearchVectorStoreRequest(
                vector_store_id=store_id,
                query=[query],
                max_num_results=8,
                ranking_options=vector_stores_pb2.RankingOptions(ranker="none"),
            ),
            metadata=t.metadata,
        )
        out.append([(r.file_id, round(r.score, 5), r.content[0].text) for r in reply.data])
    return out


def stop(proc: ServeProcess) -> None:
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0, proc.log()


@pytest.mark.e2e
async def test_damaged_index_files_are_rebuilt_at_start(
    tmp_path: Path,
    processes: list[ServeProcess],  # noqa: F811
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    target = f"127.0.0.1:{port}"
    first = ServeProcess(data_dir, port, tmp_path / "first.log")
    processes.append(first)
    channel = aio.insecure_channel(target)
    try:
        await wait_serving(channel, first)
        t = open_tenant(channel)
        store = await create_store(t, name="damaged")
        docs = [(f"d{i:02}.txt", prose(500 + i, 9_000).encode()) for i in range(20)]
        ids = await upload_all(t, docs)
        batch = await create_batch(t, store.id, ids)
        messages = await watch_to_end(t, store.id, batch.id, within=120)
        assert messages[-1].file_batch.status == B_COMPLETED
        before = await search_all(t, store.id)
        assert all(len(rows) == 8 for rows in before)
    finally:
        await channel.close(None)
    stop(first)  # saves the index and its sidecar

    index_path = data_dir / "indexes" / f"{store.id}.hnsw"
    sidecar = index_path.with_name(index_path.name + ".json")
    assert sidecar.exists(), "the index is saved with its checksum sidecar"
    good, good_sidecar = index_path.read_bytes(), sidecar.read_bytes()
    # Each restart spawns workers (seconds on a busy machine): the unit tests in
    # test_index.py cover every kind of damage, this covers one of each family end to end.
    cases = {name: DAMAGE[name][0] for name in ("neighbour-ids", "random-4k", "truncated")}
    cases["no-sidecar"] = lambda data: data
    for name, change in cases.items():
        index_path.write_bytes(change(good))
        sidecar.write_bytes(good_sidecar)
        if name == "no-sidecar":  # as the previous version left it
            sidecar.unlink()
        proc = ServeProcess(data_dir, port, tmp_path / f"{name}.log")
        processes.append(proc)
        channel = aio.insecure_channel(target)
        try:
            await wait_serving(channel, proc)
            after = await search_all(open_tenant(channel), store.id)
            assert after == before, name
            assert proc.proc.poll() is None, f"{name}: the server died:\n{proc.log()}"
        finally:
            await channel.close(None)
        stop(proc)
        assert "rebuilding it from SQLite" in proc.log(), name
        # The rebuilt index was saved with a sidecar that vouches for it.
        assert sidecar.exists(), name
