"""The keyword index is crash-safe: ``quiver serve`` SIGKILLed mid-batch, with completed files
whose chunks were only queued for the index (its commits an hour apart), one completed file
detached after its last commit, and a file that failed; after a restart, keyword search finds
every completed file's chunks exactly once and nothing of the failed or detached files."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest
from grpc import aio
from quiver.server.index.keyword import StoreKeywordIndex
from quiver.v1 import vector_stores_pb2

from tests.support.batch_helpers import (
    B_COMPLETED,
    F_COMPLETED,
    F_FAILED,
    F_IN_PROGRESS,
    create_batch,
    create_store,
    list_batch_files,
    open_db,
    prose,
    read_message,
    start_watch,
    upload_all,
    watch_to_end,
)
from tests.support.inproc import Tenant, open_tenant
from tests.support.serve import free_port
from tests.support.serve_group import ServeProcess, wait_serving

FILES = 120


def marker(i: int) -> str:
    return f"zq{i:03d}marker"


async def hits(t: Tenant, store_id: str, query: str) -> list[tuple[str, str]]:
    """(file id, text) of the store's best chunks for ``query`` under ``auto``."""
    reply = await t.stores.SearchVectorStore(
        vector_stores_pb2.SearchVectorStoreRequest(
            vector_store_id=store_id, query=[query], max_num_results=50
        ),
        metadata=t.metadata,
    )
    return [(r.file_id, "".join(c.text for c in r.content)) for r in reply.data]


def completed_chunks(data_dir: Path, store_id: str) -> list[int]:
    db = open_db(data_dir)
    try:
        return [
            int(r[0])
            for r in db.execute(
                "SELECT c.id FROM chunks c JOIN vector_store_files f "
                "ON f.vector_store_id = c.vector_store_id AND f.file_id = c.file_id "
                "WHERE c.vector_store_id = ? AND f.status = 'completed' ORDER BY c.id",
                (store_id,),
            )
        ]
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.e2e
async def test_sigkill_mid_batch_then_keyword_search_finds_every_completed_file_once(
    tmp_path: Path, processes: list[ServeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first server commits its keyword index only when a search asks for it.
    monkeypatch.setenv("QUIVER_KEYWORD_COMMIT_SECONDS", "3600")
    data_dir = tmp_path / "data"
    port = free_port()
    target = f"127.0.0.1:{port}"
    first = ServeProcess(data_dir, port, tmp_path / "first.log")
    processes.append(first)
    channel = aio.insecure_channel(target)
    try:
        await wait_serving(channel, first)
        t = open_tenant(channel)
        store = await create_store(t, name="kw-crash")
        texts = [f"{prose(500 + i, 1_500)}\n\n{marker(i)} closes it.\n" for i in range(FILES)]
        files = [(f"k{i:03}.md", x.encode()) for i, x in enumerate(texts)]
        files.append(("broken.pdf", b"%PDF-1.7 not really a pdf"))
        ids = await upload_all(t, files)
        file_of = {marker(i): ids[i] for i in range(FILES)}
        broken = ids[-1]
        batch = await create_batch(t, store.id, ids)

        call = start_watch(t, store.id, batch.id)
        done: set[str] = set()
        detached = ""
        while True:
            message = await read_message(call)
            assert message is not None
            done |= {f.file_id for f in message.files if f.status == F_COMPLETED}
            if not detached and len(done) >= 5:
                # A search commits what is queued; then one completed file is detached (its
                # removal queued, never committed before the kill).
                found = await hits(t, store.id, "closes it")
                assert found
                detached = sorted(done)[0]
                await t.stores.DeleteVectorStoreFile(
                    vector_stores_pb2.DeleteVectorStoreFileRequest(
                        vector_store_id=store.id, file_id=detached
                    ),
                    metadata=t.metadata,
                )
            if len(done) >= 20:
                break
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(timeout=10) == -signal.SIGKILL
        with contextlib.suppress(aio.AioRpcError):
            await read_message(call, within=5)
    finally:
        await channel.close(None)
    assert (data_dir / "keyword" / store.id).is_dir()

    db = open_db(data_dir)
    try:
        (in_progress, lease_expiry) = db.execute(
            "SELECT COUNT(*), MAX(lease_expires_at) FROM vector_store_files "
            "WHERE status = 'in_progress'"
        ).fetchone()
    finally:
        db.close()
    assert in_progress > 0, "the batch finished before the kill"
    await asyncio.sleep(max(0.0, lease_expiry - time.time()) + 0.1)

    monkeypatch.delenv("QUIVER_KEYWORD_COMMIT_SECONDS")
    second = ServeProcess(data_dir, port, tmp_path / "second.log")
    processes.append(second)
    channel = aio.insecure_channel(target)
    try:
        await wait_serving(channel, second)
        assert "reconciled keyword index" in second.log()
        t = open_tenant(channel)
        messages = await watch_to_end(t, store.id, batch.id, within=120)
        assert messages[-1].file_batch.status == B_COMPLETED
        statuses = {f.id: f.status for f in await list_batch_files(t, store.id, batch.id)}
        assert statuses[broken] == F_FAILED
        assert F_IN_PROGRESS not in statuses.values()
        for i in range(FILES):
            file_id = file_of[marker(i)]
            found = [
                (f, text) for f, text in await hits(t, store.id, marker(i)) if marker(i) in text
            ]
            if file_id == detached:
                assert found == [], f"detached {file_id} still found"
            else:
                assert statuses[file_id] == F_COMPLETED
                assert found == [(file_id, found[0][1])], f"{marker(i)}: {found}"
    finally:
        await channel.close(None)

    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=30) == 0, second.log()
    # Exactly once: the index holds each completed chunk one time, and nothing else.
    index = StoreKeywordIndex.open(data_dir / "keyword" / store.id)
    try:
        assert list(index.chunk_ids()) == completed_chunks(data_dir, store.id)
    finally:
        index.close()
