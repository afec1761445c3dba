"""A file's chunks and its completion in one PostgreSQL transaction, and the index catch-up
by the store's commit sequence (core/index_sync.py), on two servers in-process on port 0
sharing one database:

- a file whose chunk ids are lower than another's, but whose completing transaction commits
  after that other file's (and after the owner of the store caught up with it), is found by
  the owner's very next search (a chunk-id watermark stepped over it until the next full
  reconcile, FULL_EVERY_S later);
- a completing transaction that fails after inserting the file's chunk rows (its lease taken
  by another owner meanwhile, or a fault) leaves none of them, the file not completed, and a
  reader on another connection never sees them, not even while that transaction is open;
- at the repository: a store's commit sequence is taken in commit order.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from quiver.server.core.models import AUTO_CHUNKING
from quiver.server.storage.choice import open_storage
from quiver.server.storage.postgres.chunk_rows import PgChunkRows
from quiver.server.storage.rows import Owner, StoreRow
from quiver.v1 import vector_stores_pb2

from tests.support.batch_helpers import (
    create_batch,
    create_store,
    poll_batch,
    prose,
    upload_all,
)
from tests.support.pg_fixtures import pg_server, pg_url
from tests.support.pg_nodes import Node, pg_nodes
from tests.support.rpc_helpers import wait_for

__all__ = ["pg_server", "pg_url"]

HOLD_S = 10.0
"""Longest a test keeps a completing transaction open (below PostgreSQL's 15 s
idle_in_transaction_session_timeout)."""


@pytest.fixture
async def nodes(tmp_path: Path, pg_url: str) -> AsyncIterator[list[Node]]:
    """Two servers on the same database and keys, each seeing the other live; two ingest
    workers each, so two files of one server are in flight at once."""
    async with pg_nodes(tmp_path, pg_url, ingest_workers=2) as two:
        yield two


def chunk_rows(node: Node) -> PgChunkRows:
    rows = node.server.core.storage.chunks
    assert isinstance(rows, PgChunkRows)
    return rows


def hold_insert(
    node: Node,
    monkeypatch: pytest.MonkeyPatch,
    file_id: str,
    then: Callable[[], object],
) -> threading.Event:
    """Makes ``node``'s completing transaction of ``file_id`` run ``then`` (on its database
    thread, the transaction open) right after inserting the file's chunk rows; returns an
    event set once it has."""
    rows = chunk_rows(node)
    original = rows.insert_reserved
    reached = threading.Event()

    def insert_reserved(tx: Any, owner: Any, *args: Any) -> None:
        original(tx, owner, *args)
        if owner.file_id == file_id:
            reached.set()
            then()

    monkeypatch.setattr(rows, "insert_reserved", insert_reserved)
    return reached


def chunks_of(url: str, file_id: str) -> int:
    """The file's chunk rows another connection sees."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM chunks WHERE file_id = %s", (file_id,)).fetchone()
        assert row is not None
        return int(row[0])


def file_row(url: str, store_id: str, file_id: str) -> tuple[str, int]:
    """(status, commit sequence) of the store file, read on another connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT status, commit_seq FROM vector_store_files "
            "WHERE vector_store_id = %s AND file_id = %s",
            (store_id, file_id),
        ).fetchone()
        assert row is not None
        return str(row[0]), int(row[1])


async def found(node: Node, store_id: str) -> set[str]:
    """The files an unfiltered search of the store finds (every chunk fits the results)."""
    reply = await node.alice.stores.SearchVectorStore(
        vector_stores_pb2.SearchVectorStoreRequest(
            vector_store_id=store_id,
            query=["river bridge"],
            max_num_results=50,
            ranking_options=vector_stores_pb2.RankingOptions(ranker="none"),
        ),
        metadata=node.alice.metadata,
        timeout=30,
    )
    return {h.file_id for h in reply.data}


def owner_and_writer(nodes: list[Node], store_id: str) -> tuple[Node, Node]:
    a, b = nodes
    owner = a if a.server.core.replicas.route(store_id).local else b
    return owner, (b if owner is a else a)


async def test_a_file_whose_lower_chunk_ids_commit_last_is_found_by_the_owners_next_search(
    nodes: list[Node], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await create_store(nodes[0].alice, name="order")
    owner, writer = owner_and_writer(nodes, store.id)
    early, late = await upload_all(
        writer.alice,
        [("early.txt", prose(11, 3000).encode()), ("late.txt", prose(12, 3000).encode())],
    )
    release = threading.Event()
    reached = hold_insert(writer, monkeypatch, early, lambda: release.wait(HOLD_S))
    try:
        held = await create_batch(writer.alice, store.id, [early])
        assert await asyncio.to_thread(reached.wait, 30)
        # ``early``'s chunk rows are inserted (their ids reserved first) but not committed.
        done = await create_batch(writer.alice, store.id, [late])
        assert (await poll_batch(writer.alice, store.id, done.id)).file_counts.completed == 1
        assert await found(owner, store.id) == {late}  # the owner caught up with ``late``
        assert chunks_of(pg_url, early) == 0
    finally:
        release.set()
    assert (await poll_batch(writer.alice, store.id, held.id)).file_counts.completed == 1
    early_ids = await asyncio.to_thread(chunk_rows(owner).ids_of_files, store.id, [early])
    late_ids = await asyncio.to_thread(chunk_rows(owner).ids_of_files, store.id, [late])
    assert max(early_ids) < min(late_ids)  # lower ids ...
    assert file_row(pg_url, store.id, early)[1] > file_row(pg_url, store.id, late)[1]  # ... later
    assert await found(owner, store.id) == {early, late}  # at once, not after a full pass
    assert await found(writer, store.id) == {early, late}  # forwarded to the owner


def at_lease_check(
    node: Node, monkeypatch: pytest.MonkeyPatch, file_id: str, then: Callable[[], object]
) -> threading.Event:
    """Makes ``node``'s completing transaction of ``file_id`` run ``then`` (on its database
    thread, the transaction open) just before it reads the file's lease FOR UPDATE: after
    the file's chunk rows were written, whichever way this version writes them."""
    leases = node.server.core.leases
    original = leases.lease
    reached = threading.Event()

    def lease(tx: Any, job: Any) -> Any:
        if tx is not None and job.file_id == file_id and not reached.is_set():
            reached.set()
            then()
        return original(tx, job)

    monkeypatch.setattr(leases, "lease", lease)
    return reached


@pytest.mark.parametrize("failure", ["lease_taken", "fault"])
async def test_a_failed_completing_transaction_leaves_none_of_the_files_chunks(
    nodes: list[Node], pg_url: str, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    store = await create_store(nodes[0].alice, name="atomic")
    owner, writer = owner_and_writer(nodes, store.id)
    (file_id,) = await upload_all(writer.alice, [("one.txt", prose(21, 6000).encode())])
    seen_mid_way: list[int] = []

    def then() -> None:
        seen_mid_way.append(chunks_of(pg_url, file_id))
        if failure == "fault":
            raise RuntimeError("injected after the chunk rows were written")
        with psycopg.connect(pg_url, autocommit=True) as conn:  # another server claims it
            conn.execute(
                "UPDATE vector_store_files SET lease_owner = 'thief', "
                "generation = generation + 1, "
                "lease_expires_at = extract(epoch FROM now()) + 600 "
                "WHERE vector_store_id = %s AND file_id = %s",
                (store.id, file_id),
            )

    reached = at_lease_check(writer, monkeypatch, file_id, then)
    batch = await create_batch(writer.alice, store.id, [file_id])
    assert await asyncio.to_thread(reached.wait, 30)
    if failure == "fault":  # the file fails (server_error), its rows rolled back
        ended = await poll_batch(writer.alice, store.id, batch.id)
        assert (ended.file_counts.failed, ended.file_counts.completed) == (1, 0)
        status = "failed"
    else:  # the late result is refused; the file stays the thief's, in progress
        await wait_for(lambda: writer.server.core.scheduler.in_flight == 0, within=30)
        status = "in_progress"
    assert seen_mid_way == [0]  # not even while the transaction was open
    assert chunks_of(pg_url, file_id) == 0
    assert file_row(pg_url, store.id, file_id)[0] == status  # never completed
    assert await found(owner, store.id) == set()


def test_the_store_commit_sequence_follows_commit_order(pg_url: str, tmp_path: Path) -> None:
    """Two completing transactions of one store: the second takes its value only once the
    first has committed (the store row stays locked until then), so a reader that sees a
    value committed has every lower one committed too."""
    storage = open_storage(pg_url, tmp_path)
    try:
        with storage.transaction() as tx:
            storage.stores.insert(
                tx, StoreRow("vs_seq", "t", "s", "", 0, 0, None, None, {}, "hash", 4, True)
            )
            for f in ("first", "second"):
                storage.store_files.attach(tx, "vs_seq", f, "t", "s", 0, AUTO_CHUNKING, {}, None)
        first_marked, second_done = threading.Event(), threading.Event()
        order: list[tuple[str, int]] = []

        def complete(file_id: str, hold: float) -> None:
            with storage.transaction() as tx:
                value = storage.store_files.mark_committed(tx, "vs_seq", file_id)
                if file_id == "first":
                    first_marked.set()
                    time.sleep(hold)  # the second waits for this commit
                    assert not second_done.is_set()
            order.append((file_id, value))
            if file_id == "second":
                second_done.set()

        one = threading.Thread(target=complete, args=("first", 1.0))
        one.start()
        assert first_marked.wait(10)
        two = threading.Thread(target=complete, args=("second", 0.0))
        two.start()
        one.join(20)
        two.join(20)
        assert order == [("first", 1), ("second", 2)]
        assert storage.index_sync.commit_counter("vs_seq") == 2
    finally:
        storage.close()


def test_rows_inserted_in_the_completing_transaction_round_trip(
    pg_url: str, tmp_path: Path
) -> None:
    """Reserved ids, then the rows in one transaction (vectors sent as binary bytea): read
    back as written, in chunk order; nothing is visible before the commit."""
    storage = open_storage(pg_url, tmp_path)
    try:
        rows = storage.chunks.in_commit()
        assert rows is not None
        n, dim = 2_500, 16  # more than one statement's worth of rows
        vectors = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
        texts = [f"chunk {i}" + ("\x00" if i == 7 else "") for i in range(n)]
        ids = rows.reserve_ids(n)
        assert len(set(ids.tolist())) == n and (np.diff(ids) > 0).all()
        owner = Owner("vs_rt", "file_rt", 1, None, "t", "s")
        with storage.transaction() as tx:
            rows.insert_reserved(tx, owner, ids, texts, [3] * n, vectors)
            assert chunks_of(pg_url, "file_rt") == 0
        stored = storage.chunks.vectors([int(i) for i in ids])
        assert all(stored[int(i)] == vectors[k].tobytes() for k, i in enumerate(ids))
        read = dict(storage.chunks.texts_from("vs_rt", "file_rt", 0))
        assert read[7] == "chunk 7\ufffd" and read[n - 1] == f"chunk {n - 1}"
        assert sorted(storage.chunks.ids_of_files("vs_rt", ["file_rt"])) == ids.tolist()
    finally:
        storage.close()
