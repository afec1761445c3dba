"""A full disk, for real: the server's data directory on a small tmpfs the test mounts (as
root; skipped otherwise) and then fills. Writes answer RESOURCE_EXHAUSTED naming the disk,
never INTERNAL; searches still answer; once space is back, everything works again."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from quiver.server.config import Settings
from quiver.v1 import vector_stores_pb2

from tests.batch_helpers import B_COMPLETED, create_batch, create_store, prose, watch_to_end
from tests.conftest import Running, Tenant
from tests.rpc_helpers import error_reason, upload
from tests.tmpfs import fill, small_tmpfs


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        yield Settings(
            http_listen="127.0.0.1:0",
            listen="127.0.0.1:0",
            data_dir=disk / "data",
            ingest_workers=1,
        )


async def search(t: Tenant, store_id: str) -> vector_stores_pb2.SearchVectorStoreResponse:
    return await t.stores.SearchVectorStore(
        vector_stores_pb2.SearchVectorStoreRequest(vector_store_id=store_id, query=["river"]),
        metadata=t.metadata,
    )


def assert_disk_full(exc: aio.AioRpcError) -> None:
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
    assert error_reason(exc) == "DISK_FULL"
    assert "disk holding the server's data directory is full" in (exc.details() or "")


async def test_a_full_disk_answers_resource_exhausted(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    a = running.alice
    store = await create_store(a)
    file = await upload(a, "river.txt", prose(1, 20_000).encode())
    batch = await create_batch(a, store.id, [file.id])
    assert (await watch_to_end(a, store.id, batch.id, within=60))[-1].file_batch.status == (
        B_COMPLETED
    )
    before = await search(a, store.id)
    assert before.data

    data_dir = running.server.settings.data_dir
    # An empty WAL (checkpointed and truncated now) and a reader holding its snapshot, which
    # keeps SQLite from restarting the WAL: every write must grow the WAL file, so on a full
    # disk every write fails.
    reader = sqlite3.connect(data_dir / "quiver.sqlite3")
    busy, _, _ = reader.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM vector_stores").fetchone()
    ballast = fill(data_dir.parent)
    try:
        # An upload writes its blob: ENOSPC at once.
        with pytest.raises(aio.AioRpcError) as err:
            await upload(a, "big.txt", b"x" * 200_000)
        assert_disk_full(err.value)

        for i in range(3):  # SQLite: "database or disk is full"
            with pytest.raises(aio.AioRpcError) as err:
                await create_store(a, name=f"full {i}")
            assert_disk_full(err.value)

        # Search still answers; its last_active_at cannot be written (logged, skipped).
        running.server.core.stores.clock = lambda: time.time() + 60  # a new value to write
        with caplog.at_level(logging.WARNING, logger="quiver.stores"):
            during = await search(a, store.id)
        assert f"last_active_at of {store.id} not updated" in caplog.text
        assert [(r.file_id, r.content[0].text) for r in during.data] == [
            (r.file_id, r.content[0].text) for r in before.data
        ]
    finally:
        reader.rollback()
        reader.close()
        ballast.unlink()

    again = await create_store(a, name="space is back")
    assert again.id
    assert (await upload(a, "after.txt", b"fine")).bytes == 4
    assert (await search(a, store.id)).data


async def test_stop_on_a_full_disk_is_clean(running: Running) -> None:
    """The final WAL checkpoint cannot grow the database: stop() still ends cleanly."""
    a = running.alice
    await create_store(a)
    reader = sqlite3.connect(running.server.settings.data_dir / "quiver.sqlite3")
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM vector_stores").fetchone()
    for i in range(20):  # a WAL the checkpoint must copy into the database file
        await create_store(a, name=f"s{i}")
    reader.rollback()
    reader.close()
    ballast = fill(running.server.settings.data_dir.parent)
    try:
        await running.server.stop(grace=1)
    finally:
        ballast.unlink()
