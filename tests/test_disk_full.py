"""A full disk, for real: the server's data directory on a small tmpfs the test mounts (as
root; skipped otherwise) and then fills. Writes answer RESOURCE_EXHAUSTED naming the disk,
never INTERNAL; searches still answer; once space is back, everything works again."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from quiver.server.config import Settings
from quiver.v1 import vector_stores_pb2

from tests.support.batch_helpers import B_COMPLETED, create_batch, create_store, prose, watch_to_end
from tests.support.inproc import Running, Tenant
from tests.support.rpc_helpers import error_reason, upload, wait_for
from tests.support.tmpfs import fill, small_tmpfs


@pytest.fixture
def settings(tmp_path: Path, overrides: dict[str, Any]) -> Iterator[Settings]:
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        base = Settings(
            http_listen="127.0.0.1:0",
            listen="127.0.0.1:0",
            data_dir=disk / "data",
            ingest_workers=1,
        )
        yield replace(base, **overrides)


def hold_a_reader(data_dir: Path) -> sqlite3.Connection:
    """An empty WAL (checkpointed and truncated now) and a reader holding its snapshot, which
    keeps SQLite from restarting the WAL: every write must grow the WAL file, so on a full
    disk every write fails. Roll it back and close it to let go."""
    reader = sqlite3.connect(data_dir / "quiver.sqlite3")
    busy, _, _ = reader.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM vector_stores").fetchone()
    return reader


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
    reader = hold_a_reader(data_dir)
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


@pytest.mark.parametrize(
    "overrides", [{"replica_heartbeat_seconds": 0.1, "job_renew_seconds": 0.1}]
)
async def test_a_heartbeat_on_a_full_disk_warns_without_a_traceback(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk is an outage that passes: the heartbeat (and the lease renewal and sweep)
    that meets it tries again at its next beat, and says so in a warning, not in an error
    with a traceback (which would page someone for every beat)."""
    await create_store(running.alice)
    data_dir = running.server.settings.data_dir
    reader = hold_a_reader(data_dir)
    ballast = fill(data_dir.parent)
    try:
        with caplog.at_level(logging.WARNING, logger="quiver"):
            # Until a heartbeat met the full disk (every 0.1 s; however it was logged).
            await wait_for(
                lambda: any("replica heartbeat failed" in r.getMessage() for r in caplog.records),
                within=30,
            )
    finally:
        reader.rollback()
        reader.close()
        ballast.unlink()
    beats = [r for r in caplog.records if r.name in ("quiver.replicas", "quiver.leases")]
    assert any("replica heartbeat failed (tried again soon)" in r.getMessage() for r in beats)
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in beats), [
        (r.levelname, r.getMessage()) for r in beats
    ]


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
