"""Recovery: a server stopped (or SIGKILLed) mid-batch takes the batch up again at start,
each file completes exactly once, no chunk is stored twice, and lost indexes are rebuilt."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.config import Settings
from quiver.server.ingest.chunking import ChunkingParams, chunk_text
from quiver.v1 import (
    file_batches_pb2,
    vector_stores_pb2,
)

from tests.support.batch_helpers import (
    B_CANCELLED,
    B_COMPLETED,
    F_COMPLETED,
    F_IN_PROGRESS,
    PoolUse,
    check_stream,
    chunk_index_gaps,
    chunk_rows,
    content,
    counts,
    create_batch,
    create_store,
    duplicate_chunks,
    index_matches_chunks,
    list_batch_files,
    open_db,
    poll_file,
    prose,
    read_message,
    start_watch,
    upload_all,
    watch_to_end,
)
from tests.support.inproc import Running, _tenant, open_tenant
from tests.support.rpc_helpers import upload, wait_for
from tests.support.serve import free_port
from tests.support.serve_group import ServeProcess, wait_serving

AUTO = ChunkingParams(800, 400)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, ingest_workers=1)


def expected_chunks(text: str) -> list[str]:
    return [c.text for c in chunk_text(text, AUTO)]


def chunk_ids(data_dir: Path, store_id: str) -> dict[str, list[int]]:
    db = open_db(data_dir)
    try:
        out: dict[str, list[int]] = {}
        for file_id, chunk_id in db.execute(
            "SELECT file_id, id FROM chunks WHERE vector_store_id = ? ORDER BY file_id, id",
            (store_id,),
        ):
            out.setdefault(str(file_id), []).append(int(chunk_id))
        return out
    finally:
        db.close()


def file_statuses(data_dir: Path, store_id: str) -> dict[str, str]:
    db = open_db(data_dir)
    try:
        return {
            str(r[0]): str(r[1])
            for r in db.execute(
                "SELECT file_id, status FROM vector_store_files WHERE vector_store_id = ?",
                (store_id,),
            )
        }
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.parametrize("lose_index", [False, True], ids=["index-kept", "index-deleted"])
async def test_a_stopped_server_finishes_the_batch_after_restart(
    running: Running, lose_index: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = running.alice
    data_dir = running.server.settings.data_dir
    store = await create_store(a)
    texts = [prose(i, 60_000 + 5_000 * (i % 4)) for i in range(30)]
    ids = await upload_all(a, [(f"r{i}.txt", t.encode()) for i, t in enumerate(texts)])
    text_of = dict(zip(ids, texts, strict=True))
    batch = await create_batch(a, store.id, ids)

    # Stop once a few files are done and most are still queued.
    call = start_watch(a, store.id, batch.id)
    while True:
        message = await read_message(call)
        assert message is not None
        done = message.file_batch.file_counts.completed
        if done >= 3:
            break
    assert done < 30, "the batch finished before the stop"
    call.cancel()
    # A file attached on its own, queued behind the batch, is taken up again too.
    single_text = prose(99, 1_000_000)  # too big to finish within the stop's grace period
    single = (await upload(a, "single.txt", single_text.encode())).id
    await a.stores.CreateVectorStoreFile(
        vector_stores_pb2.CreateVectorStoreFileRequest(vector_store_id=store.id, file_id=single),
        metadata=a.metadata,
    )
    await asyncio.wait_for(running.server.stop(grace=0.1), timeout=10)

    before = file_statuses(data_dir, store.id)
    assert before.pop(single) == "in_progress"
    finished = {f for f, s in before.items() if s == "completed"}
    assert 3 <= len(finished) < 30
    assert set(before.values()) == {"completed", "in_progress"}
    ids_before = chunk_ids(data_dir, store.id)
    assert finished <= set(ids_before)  # every completed file's chunks are stored
    # A file still in progress may have left chunks: they are written in slices before the
    # file completes (never searchable meanwhile), and the restart removes them first.
    unfinished = {f for f, s in before.items() if s == "in_progress"} | {single}
    assert set(ids_before) - finished <= unfinished
    ids_before = {f: v for f, v in ids_before.items() if f in finished}
    index_files = list((data_dir / "indexes").glob("*"))
    assert index_files, "stop() saves the index"
    if lose_index:
        for path in index_files:
            path.unlink()

    again = QuiverServer(running.server.settings)
    use = PoolUse(again.core.pool, monkeypatch)
    await again.start()
    channel = aio.insecure_channel(f"127.0.0.1:{again.port}")
    try:
        alice = _tenant("alice", a.key, channel)
        index = again.core.indexes.get(store.id, store.embedding_dimensions)
        # Reconciled (or rebuilt) before SERVING: it holds what SQLite holds already.
        assert index.live_count == sum(len(v) for v in ids_before.values())

        messages = await watch_to_end(alice, store.id, batch.id, within=60)
        check_stream(messages)
        assert messages[-1].file_batch.status == B_COMPLETED
        assert counts(messages[-1].file_batch.file_counts) == (0, 30, 0, 0, 30)
        files = await list_batch_files(alice, store.id, batch.id)
        assert sorted(f.id for f in files) == sorted(ids)
        assert all(f.status == F_COMPLETED for f in files)

        done_single = await poll_file(alice, store.id, single, within=30)
        assert done_single.status == F_COMPLETED
        assert await content(alice, store.id, single) == expected_chunks(single_text)
        # Exactly once: files finished before the stop were not processed again (same chunk
        # rows), the others were processed once each by the new server.
        assert use.calls == 30 - len(finished) + 1
        ids_after = chunk_ids(data_dir, store.id)
        for file_id in finished:
            assert ids_after[file_id] == ids_before[file_id]
        rows = chunk_rows(data_dir, store.id)
        assert rows.pop(single) == len(expected_chunks(single_text))
        for file_id in ids:
            parts = await content(alice, store.id, file_id)
            assert parts == expected_chunks(text_of[file_id])
            assert rows[file_id] == len(parts)
        assert duplicate_chunks(data_dir) == []
        assert chunk_index_gaps(data_dir) == []
        assert index.live_count == sum(rows.values()) + len(expected_chunks(single_text))
        assert index.labels().tolist() == sorted(i for v in ids_after.values() for i in v)
    finally:
        await channel.close(None)
        await again.stop(grace=1)
    assert (data_dir / "indexes" / f"{store.id}.hnsw").exists()


async def test_a_cancel_in_progress_at_stop_ends_cancelled_after_restart(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while a file was in flight, stopped before it settled: at the next start
    the batch ends cancelled and nothing more is processed."""
    a = running.alice
    store = await create_store(a)
    docs = [("big.txt", prose(1, 2_000_000).encode())]
    docs += [(f"c{i}.txt", prose(i, 500).encode()) for i in range(5)]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    await wait_for(lambda: running.server.core.scheduler.in_flight == 1, within=10)
    reply = await a.batches.CancelFileBatch(
        file_batches_pb2.CancelFileBatchRequest(vector_store_id=store.id, batch_id=batch.id),
        metadata=a.metadata,
    )
    assert counts(reply.file_batch.file_counts) == (1, 0, 0, 5, 6)
    await asyncio.wait_for(running.server.stop(grace=0.1), timeout=10)
    assert file_statuses(running.server.settings.data_dir, store.id)[ids[0]] == "in_progress"

    again = QuiverServer(running.server.settings)
    use = PoolUse(again.core.pool, monkeypatch)
    await again.start()
    channel = aio.insecure_channel(f"127.0.0.1:{again.port}")
    try:
        alice = _tenant("alice", a.key, channel)
        messages = await watch_to_end(alice, store.id, batch.id, within=10)
        assert len(messages) == 1  # settled during recovery, before SERVING
        assert messages[0].file_batch.status == B_CANCELLED
        assert counts(messages[0].file_batch.file_counts) == (0, 0, 0, 6, 6)
        assert again.core.scheduler.queued == 0 and again.core.scheduler.in_flight == 0
        assert use.calls == 0
        assert chunk_rows(running.server.settings.data_dir, store.id) == {}
    finally:
        await channel.close(None)
        await again.stop(grace=1)


async def test_chunks_left_by_a_file_that_ended_cancelled_are_deleted_at_start(
    running: Running,
) -> None:
    """What a SIGKILL between a cancelled file's settling and the deletion of its attempt's
    chunk rows leaves (on SQLite, written before the completing transaction): the file
    ``cancelled`` with chunk rows. The next start deletes them (no later attempt would, and
    recovery takes up only files in progress) before it reconciles the index."""
    a = running.alice
    data_dir = running.server.settings.data_dir
    store = await create_store(a)
    ids = await upload_all(a, [(f"k{i}.txt", prose(40 + i, 3_000).encode()) for i in range(2)])
    batch = await create_batch(a, store.id, ids)
    assert (await watch_to_end(a, store.id, batch.id, within=60))[-1].file_batch.status == (
        B_COMPLETED
    )
    await running.server.stop(grace=1)
    db = sqlite3.connect(data_dir / "quiver.sqlite3", timeout=10)
    try:
        with db:
            db.execute(
                "UPDATE vector_store_files SET status = 'cancelled', usage_bytes = 0 "
                "WHERE vector_store_id = ? AND file_id = ?",
                (store.id, ids[0]),
            )
    finally:
        db.close()
    assert set(chunk_rows(data_dir, store.id)) == set(ids)

    again = QuiverServer(running.server.settings)
    await again.start()
    try:
        assert set(chunk_rows(data_dir, store.id)) == {ids[1]}
    finally:
        await again.stop(grace=1)
    assert index_matches_chunks(data_dir, store.id) == ([], [])


# -- end to end: `quiver serve`, SIGKILL, restart ------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
async def test_sigkill_mid_batch_then_restart(
    tmp_path: Path, processes: list[ServeProcess]
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
        store = await create_store(t, name="e2e")
        texts = [prose(1000 + i, 3_000 + 250 * (i % 20)) for i in range(200)]
        ids = await upload_all(t, [(f"e{i:03}.md", x.encode()) for i, x in enumerate(texts)])
        text_of = dict(zip(ids, texts, strict=True))
        batch = await create_batch(t, store.id, ids)
        assert batch.file_counts.total == 200

        call = start_watch(t, store.id, batch.id)
        seen_settled: set[str] = set()
        while True:
            message = await read_message(call)
            assert message is not None
            seen_settled |= {f.file_id for f in message.files if f.status != F_IN_PROGRESS}
            if message.file_batch.file_counts.completed >= 10:
                break
        last_sequence = message.sequence
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(timeout=10) == -signal.SIGKILL
        completed_at_kill = message.file_batch.file_counts.completed
        assert completed_at_kill < 200, "the batch finished before the kill"
        with contextlib.suppress(aio.AioRpcError):
            await read_message(call, within=5)  # the stream breaks
    finally:
        await channel.close(None)

    db = open_db(data_dir)
    try:
        (in_progress, lease_expiry) = db.execute(
            "SELECT COUNT(*), MAX(lease_expires_at) FROM vector_store_files "
            "WHERE status = 'in_progress'"
        ).fetchone()
    finally:
        db.close()
    assert in_progress > 0, "nothing was left to recover"
    # The killed server's leases: the next start takes up those that have expired by then.
    assert lease_expiry > 0
    await asyncio.sleep(max(0.0, lease_expiry - time.time()) + 0.1)

    second = ServeProcess(data_dir, port, tmp_path / "second.log")
    processes.append(second)
    channel = aio.insecure_channel(target)
    try:
        await wait_serving(channel, second)
        assert "resuming unfinished files" in second.log()
        t = open_tenant(channel)
        # The client picks up where it was cut off: only the changes after its last sequence.
        resumed = await watch_to_end(t, store.id, batch.id, last_sequence, within=60)
        sent = [f.file_id for m in resumed for f in m.files]
        assert len(sent) == len(set(sent))
        assert set(sent) == set(ids) - seen_settled
        assert resumed[-1].file_batch.status == B_COMPLETED
        messages = await watch_to_end(t, store.id, batch.id, within=60)
        check_stream(messages)
        assert messages[-1].file_batch.status == B_COMPLETED
        assert counts(messages[-1].file_batch.file_counts) == (0, 200, 0, 0, 200)
        files = await list_batch_files(t, store.id, batch.id)
        assert len(files) == 200
        assert all(f.status == F_COMPLETED for f in files)
        assert await list_batch_files(t, store.id, batch.id, F_IN_PROGRESS) == []
        for file_id in ids[::20]:
            assert await content(t, store.id, file_id) == expected_chunks(text_of[file_id])
    finally:
        await channel.close(None)

    # SIGTERM drains and exits 0; then the database is checked from outside.
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=30) == 0, second.log()
    rows = chunk_rows(data_dir, store.id)
    assert rows == {f: len(expected_chunks(text_of[f])) for f in ids}
    assert duplicate_chunks(data_dir) == []
    assert chunk_index_gaps(data_dir) == []
    db = open_db(data_dir)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses: dict[str, Any] = dict(
            db.execute("SELECT status, COUNT(*) FROM batch_files GROUP BY status").fetchall()
        )
        assert statuses == {"completed": 200}
    finally:
        db.close()
