"""A stop that cancels a file's ingest while its completing transaction runs on a database
thread: the transaction finishes whole there (DbCalls never stops a body that started), so
the cancelled ingest must not then clean up the chunks of a file that did complete (on
SQLite it deleted the rows of a completed file, lost for good: recovery only looks at
unfinished files). Here the transaction has committed and its thread is held before the
caller hears the answer; the stop's cancel is delivered meanwhile.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from quiver.server.config import Settings
from quiver.server.core import chunk_writer
from quiver.server.core import processing as processing_module
from quiver.v1 import vector_stores_pb2

from tests.support.batch_helpers import (
    create_batch,
    create_store,
    index_matches_chunks,
    prose,
    upload_all,
)
from tests.support.inproc import serving
from tests.support.rpc_helpers import wait_for


def stored_chunks(data_dir: Path, file_id: str) -> int:
    with sqlite3.connect(data_dir / "quiver.sqlite3") as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM chunks WHERE file_id = ?", (file_id,)
        ).fetchone()
        return int(count)


def file_status(data_dir: Path, file_id: str) -> str:
    with sqlite3.connect(data_dir / "quiver.sqlite3") as conn:
        (status,) = conn.execute(
            "SELECT status FROM vector_store_files WHERE file_id = ?", (file_id,)
        ).fetchone()
        return str(status)


def release_once_the_stop_began(
    scheduler: Any, release: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's stop cancels its ingest first; ``release`` lets the held thread go half
    a second after that cancel was delivered."""
    stop = scheduler.stop

    async def stop_then_release() -> None:
        stopping = asyncio.ensure_future(stop())
        await asyncio.sleep(0.5)
        release.set()
        await stopping

    monkeypatch.setattr(scheduler, "stop", stop_then_release)


async def test_a_stop_during_the_completing_transaction_keeps_the_completed_files_chunks(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = settings.data_dir
    reached, release = threading.Event(), threading.Event()
    async with serving(replace(settings, http_listen="off")) as running:
        store = await create_store(running.alice, name="stop-mid-commit")
        (file_id,) = await upload_all(running.alice, [("one.txt", prose(5, 6000).encode())])
        processing = running.server.core.processing
        original = processing._complete

        def complete(job: Any, *args: Any) -> Any:  # on its database thread
            answer = original(job, *args)  # committed
            if job.file_id == file_id:
                reached.set()
                release.wait(20)  # the caller is cancelled before it hears the answer
            return answer

        monkeypatch.setattr(processing, "_complete", complete)
        await create_batch(running.alice, store.id, [file_id])
        assert await asyncio.to_thread(reached.wait, 60)
        # The stop (after the RPCs' 1 s grace) cancels the ingest while the transaction
        # waits on its thread; the transaction is let go once that cancel was delivered.
        release_once_the_stop_began(running.server.core.scheduler, release, monkeypatch)
    assert file_status(data_dir, file_id) == "completed"
    assert stored_chunks(data_dir, file_id) > 0

    async with serving(replace(settings, http_listen="off")) as again:  # and it is found
        found = await again.alice.stores.SearchVectorStore(
            vector_stores_pb2.SearchVectorStoreRequest(vector_store_id=store.id, query=["prose"]),
            metadata=again.alice.metadata,
        )
        assert {hit.file_id for hit in found.data} == {file_id}


async def test_a_stop_while_vectors_are_added_leaves_none_of_them_in_the_index(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop's cancel reaches the ingest while its thread adds the file's vectors to the
    index: the labels are taken out once that thread is done, so the saved index holds none
    of a file that did not complete (taken out at once, the labels added after stayed, with
    no chunk behind them: found by the soak after a clean stop)."""
    data_dir = settings.data_dir
    reached, release = threading.Event(), threading.Event()
    real_add = chunk_writer.add_to_index

    def add_to_index(index: Any, ids: Any, vectors: Any) -> None:  # on its thread
        reached.set()
        release.wait(20)  # the ingest is cancelled before the vectors go in
        real_add(index, ids, vectors)

    monkeypatch.setattr(processing_module, "add_to_index", add_to_index)
    async with serving(replace(settings, http_listen="off")) as running:
        store = await create_store(running.alice, name="stop-mid-add")
        (file_id,) = await upload_all(running.alice, [("one.txt", prose(6, 6000).encode())])
        await create_batch(running.alice, store.id, [file_id])
        assert await asyncio.to_thread(reached.wait, 60)
        release_once_the_stop_began(running.server.core.scheduler, release, monkeypatch)
    assert file_status(data_dir, file_id) == "in_progress"  # resumed at the next start
    assert stored_chunks(data_dir, file_id) == 0
    assert index_matches_chunks(data_dir, store.id) == ([], [])

    monkeypatch.setattr(processing_module, "add_to_index", real_add)
    async with serving(replace(settings, http_listen="off")) as again:  # and then completed
        await wait_for(lambda: file_status(data_dir, file_id) == "completed", within=60)
        found = await again.alice.stores.SearchVectorStore(
            vector_stores_pb2.SearchVectorStoreRequest(vector_store_id=store.id, query=["prose"]),
            metadata=again.alice.metadata,
        )
        assert {hit.file_id for hit in found.data} == {file_id}
