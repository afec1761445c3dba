"""A full disk during an ingest commit (issue 9 item 5): the file is retried when space
returns, or fails with server_error once the bounded retries give up; never left in
progress with its batch and watchers hanging.

The data directory lives on a small tmpfs this test mounts (root only), filled with a
filler file after the uploads so the commit of the file's chunks (several MB) cannot fit
while the small status writes still can.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.config import Settings
from quiver.v1 import common_pb2, vector_stores_pb2

from tests.support.batch_helpers import (
    chunk_index_gaps,
    create_batch,
    create_store,
    duplicate_chunks,
    get_file,
    open_db,
    watch_to_end,
)
from tests.support.inproc import Running, _tenant, keyed
from tests.support.loop_probe import big_text
from tests.support.rpc_helpers import upload
from tests.support.tmpfs import fill, small_tmpfs

DISK_MB = 40
LEFT_FREE = 256 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", f"{DISK_MB}m") as mountpoint:
        yield mountpoint


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Running]:
    cfg, keys = keyed(settings)
    server = QuiverServer(cfg)
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(
            server,
            f"127.0.0.1:{port}",
            channel,
            _tenant("alice", keys["alice"], channel),
            _tenant("bob", keys["bob"], channel),
        )
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)


def on_disk(settings: Settings, disk: Path, attempts: int) -> Settings:
    return replace(
        settings,
        data_dir=disk / "data",
        commit_attempts=attempts,
        commit_retry_delay=0.3,
        index_save_interval=3600.0,
    )


async def test_a_commit_that_hits_a_full_disk_completes_once_space_returns(
    settings: Settings, disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(on_disk(settings, disk, attempts=50)) as running:
        a = running.alice
        store = await create_store(a)
        file_id = (await upload(a, "big.txt", big_text(1.5))).id
        filler = fill(disk, LEFT_FREE)
        batch = await create_batch(a, store.id, [file_id])
        for _ in range(600):  # until a commit attempt failed on the full disk
            if any("disk full" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the commit never hit the full disk")
        assert (await get_file(a, store.id, file_id)).status == (
            common_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS
        )
        filler.unlink()  # space returns: the next retry stores the file
        messages = await watch_to_end(a, store.id, batch.id, within=120)
        final = messages[-1].file_batch
        assert final.file_counts.completed == 1, final
        data_dir = running.server.settings.data_dir
        assert duplicate_chunks(data_dir) == []
        assert chunk_index_gaps(data_dir) == []
        search = await a.stores.SearchVectorStore(
            vector_stores_pb2.SearchVectorStoreRequest(vector_store_id=store.id, query=["quiver7"]),
            metadata=a.metadata,
        )
        assert search.data


async def test_a_commit_that_never_fits_fails_with_server_error_and_the_batch_ends(
    settings: Settings, disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three attempts, then the file fails. Recording that needs disk space too: the status
    write (and the deletion of the partial chunks) waits and is retried, with the file still
    in progress, until the disk has room again."""
    async with serve(on_disk(settings, disk, attempts=3)) as running:
        a = running.alice
        store = await create_store(a)
        file_id = (await upload(a, "big.txt", big_text(1.5))).id
        filler = fill(disk, LEFT_FREE)
        try:
            batch = await create_batch(a, store.id, [file_id])
            for _ in range(600):  # until the retries gave up
                if any("failed 3 times" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the commit was not given up after 3 attempts")
            await asyncio.sleep(1.0)
            status = (await get_file(a, store.id, file_id)).status
            if status == common_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS:
                # the failure could not be written yet: it is being retried, not dropped
                assert any("stays in progress" in r.getMessage() for r in caplog.records)
            watch = asyncio.create_task(watch_to_end(a, store.id, batch.id, within=120))
        finally:
            filler.unlink()
        messages = await watch
        final = messages[-1].file_batch
        assert final.file_counts.failed == 1, final
        failed = await get_file(a, store.id, file_id)
        assert failed.last_error.code == "server_error"
        assert "3 attempts" in failed.last_error.message
        assert "full" in failed.last_error.message
        with open_db(running.server.settings.data_dir) as db:  # partial chunks removed
            left = db.execute("SELECT COUNT(*) FROM chunks WHERE file_id = ?", (file_id,))
            assert left.fetchone()[0] == 0
        waited = status == common_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS
        print(f"\nrecording the failure had to wait for disk space: {waited}")
