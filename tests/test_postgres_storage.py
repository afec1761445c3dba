"""The PostgreSQL storage against a real PostgreSQL server: the repositories, the batch
sequence and job claims under concurrent writers with their own connections (as several
servers have), the core built by ``build_core`` on ``--database postgresql://...``, and a
restart of PostgreSQL (UNAVAILABLE while it is down, then served again)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from quiver.server.config import Settings, check_database
from quiver.server.core.models import AUTO_CHUNKING, FileStatus
from quiver.server.core.principal import Principal
from quiver.server.core.root import Core, build_core
from quiver.server.core.search import check_search
from quiver.server.storage.choice import open_storage
from quiver.server.storage.interfaces import Storage
from quiver.server.storage.rows import NotWanted, Owner, StorageUnavailable, StoreRow
from quiver.v1 import vector_stores_pb2

from tests.support.pg_fixtures import pg_server, pg_url
from tests.support.postgres import PostgresServer

__all__ = ["pg_server", "pg_url"]

ALICE = Principal("alice")
TEXT = (
    "Quivers hold arrows. The archer's quiver was made of birch bark and leather.\n\n"
    "Sourdough bread needs a starter, flour, water and salt."
)


def test_the_database_setting_is_checked() -> None:
    assert check_database("") is None
    assert check_database("postgresql://quiver@127.0.0.1:5432/quiver") is None
    for bad in ("mysql://x@h/db", "postgresql://", "postgresql://h:1/", "/tmp/q.sqlite3"):
        problem = check_database(bad)
        assert problem is not None and problem.startswith("database"), bad
    with pytest.raises(ValueError, match="database"):
        build_core(Settings(data_dir=Path("/nonexistent"), database="sqlite:///x"))


def test_batch_sequences_are_gap_free_under_concurrent_writers(pg_url: str) -> None:
    """Four writers, each with its own pool (as separate servers), raise one batch's
    sequence 50 times each: every value 1..200 exactly once, each with its file change."""
    storages = [open_storage(pg_url, Path("/unused")) for _ in range(4)]
    try:
        first = storages[0]
        with first.transaction() as tx:
            first.batches.insert(tx, "batch_1", "vs_1", "t", "s", 0, None, None)
            first.batches.add_files(tx, "batch_1", [f"file_{i}" for i in range(200)])
        seen: list[int] = []
        lock = threading.Lock()

        def write(n: int) -> None:
            storage = storages[n]
            for i in range(n, 200, 4):
                with storage.transaction() as tx:
                    sequence = storage.batches.next_sequence(tx, "batch_1")
                    assert sequence is not None
                    storage.batches.set_file(
                        tx, "batch_1", f"file_{i}", FileStatus.COMPLETED, None, sequence
                    )
                with lock:
                    seen.append(sequence)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seen) == list(range(1, 201))
        changes = first.batches.sequenced_changes("batch_1", 0, 200)
        assert [s for s, _ in changes] == list(range(1, 201))
        assert first.batches.status_counts("batch_1") == {"completed": 200}
        row = first.batches.get("batch_1")
        assert row is not None and row.sequence == 200
    finally:
        for storage in storages:
            storage.close()


def _attach(storage_url: str, n: int) -> None:
    storage = open_storage(storage_url, Path("/unused"))
    try:
        with storage.transaction() as tx:
            storage.stores.insert(
                tx,
                StoreRow("vs_1", "t", "s", "", 0, 0, None, None, {"k": "v"}, "hash", 8, True),
            )
            for i in range(n):
                storage.store_files.attach(
                    tx, "vs_1", f"file_{i}", "t", "s", 0, AUTO_CHUNKING, {"i": i}, None
                )
    finally:
        storage.close()


def test_expired_jobs_are_claimed_once_across_servers(pg_url: str) -> None:
    """Two servers sweeping at once (FOR UPDATE SKIP LOCKED) claim disjoint files, each
    claim bumps the generation, and the older claim no longer holds the file."""
    _attach(pg_url, 40)
    a, b = (open_storage(pg_url, Path("/unused")) for _ in range(2))
    try:
        claimed: dict[str, list[tuple[str, int]]] = {}
        barrier = threading.Barrier(2)

        def sweep(name: str, storage: Storage) -> None:
            got: list[tuple[str, int]] = []
            barrier.wait()
            while True:
                with storage.transaction() as tx:
                    batch = storage.jobs.claim_expired(tx, name, time.time(), time.time() + 60, 3)
                if not batch:
                    break
                got += [(c.file_id, c.generation) for c in batch]
            claimed[name] = got

        threads = [threading.Thread(target=sweep, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        files_a = {f for f, _ in claimed["a"]}
        files_b = {f for f, _ in claimed["b"]}
        assert not files_a & files_b
        assert files_a | files_b == {f"file_{i}" for i in range(40)}
        assert all(g == 2 for _, g in claimed["a"] + claimed["b"])  # attach 1, claim 2
        lease = a.jobs.lease(None, "vs_1", "file_0")
        assert lease is not None and lease.generation == 2
        assert a.jobs.renew(lease.owner or "", time.time() + 120) > 0
        current = a.jobs.current("vs_1", "file_0")
        assert current is None  # no files row: the worker's join finds nothing to do
    finally:
        a.close()
        b.close()


def test_a_slice_under_a_superseded_claim_is_refused(pg_url: str) -> None:
    """The generation fence: once another server claimed the file again, a chunk slice
    written under the older claim raises NotWanted and stores nothing."""
    _attach(pg_url, 1)
    a, b = (open_storage(pg_url, Path("/unused")) for _ in range(2))
    try:
        now = time.time()
        with a.transaction() as tx:
            (mine,) = a.jobs.claim_expired(tx, "a", now, now + 0.01, 1)
        time.sleep(0.05)  # a's lease expires without renewal
        with b.transaction() as tx:
            (theirs,) = b.jobs.claim_expired(tx, "b", time.time(), time.time() + 60, 1)
        assert theirs.generation == mine.generation + 1
        vectors = np.zeros((2, 8), dtype=np.float32)
        stale = Owner("vs_1", "file_0", mine.generation, None, "t", "s")
        with pytest.raises(NotWanted):
            a.chunks.insert_slice(stale, ["x", "y"], [1, 1], vectors, 0, 2)
        assert a.chunks.ids_of_files("vs_1", ["file_0"]) == []
        current = Owner("vs_1", "file_0", theirs.generation, None, "t", "s")
        ids = b.chunks.insert_slice(current, ["x", "y"], [1, 1], vectors, 0, 2)
        assert sorted(b.chunks.ids_of_files("vs_1", ["file_0"])) == sorted(ids.tolist())
        assert list(b.chunks.texts_from("vs_1", "file_0", 0)) == [(0, "x"), (1, "y")]
    finally:
        a.close()
        b.close()


def test_a_lease_read_inside_a_transaction_holds_off_claims_until_it_commits(
    pg_url: str,
) -> None:
    """The check before a completion (``lease`` inside its transaction) locks the row: an
    expired lease cannot be claimed by another server between that check and the commit;
    once it commits, it can."""
    _attach(pg_url, 1)
    a, b = (open_storage(pg_url, Path("/unused")) for _ in range(2))
    try:
        now = time.time()
        with a.transaction() as tx:
            (mine,) = a.jobs.claim_expired(tx, "a", now, now + 0.01, 1)
        time.sleep(0.05)  # a's lease has expired: claimable by anyone
        claimed: list[list[int]] = []

        def claim() -> None:
            with b.transaction() as tx:
                got = b.jobs.claim_expired(tx, "b", time.time(), time.time() + 60, 1)
            claimed.append([c.generation for c in got])

        with a.transaction() as tx:
            lease = a.jobs.lease(tx, "vs_1", "file_0")
            assert lease is not None and lease.generation == mine.generation
            during = threading.Thread(target=claim)
            during.start()
            during.join(10)
            assert not during.is_alive(), "the claim waited instead of skipping the locked row"
        assert claimed == [[]], "claimed while a held the row"
        claim()
        assert claimed[-1] == [mine.generation + 1]
    finally:
        a.close()
        b.close()


def test_repository_rows_round_trip(pg_url: str) -> None:
    _attach(pg_url, 3)
    storage = open_storage(pg_url, Path("/unused"))
    try:
        store = storage.stores.get("vs_1", "t", "s")
        assert store is not None and store.metadata == {"k": "v"} and store.dimensions_sent
        assert storage.stores.dimensioned() == [("vs_1", 8)]
        assert sorted(storage.store_files.status_counts("vs_1")) == [("in_progress", 3, 0)]
        got = storage.store_files.get("vs_1", "file_2")
        assert got is not None and got.attributes == {"i": 2} and got.chunking == AUTO_CHUNKING
        with storage.transaction() as tx:
            generation = storage.store_files.attach(
                tx, "vs_1", "file_2", "t", "s", 0, AUTO_CHUNKING, {}, None
            )
            assert generation == 2
            storage.store_files.set_status(tx, "vs_1", "file_2", FileStatus.COMPLETED, None, 5)
        assert storage.store_files.completed_attributes("vs_1", ["file_2", "x"]) == [("file_2", {})]
    finally:
        storage.close()


@pytest.fixture
async def pg_core(tmp_path: Path, pg_url: str) -> AsyncIterator[Core]:
    core = build_core(Settings(data_dir=tmp_path / "data", ingest_workers=1, database=pg_url))
    try:
        await core.start_workers()
        assert await core.recover() == 0
        core.start_processing()
        yield core
    finally:
        await core.stop_processing()
        core.close()


async def _completed(core: Core, store_id: str, file_id: str, within: float = 60) -> FileStatus:
    deadline = time.monotonic() + within
    while True:
        status = (await core.store_files.get(ALICE, store_id, file_id)).status
        if status is not FileStatus.IN_PROGRESS or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


async def test_the_core_on_postgresql_ingests_searches_and_deletes(pg_core: Core) -> None:
    core = pg_core
    store = await core.stores.create(
        ALICE,
        name="notes",
        metadata={"team": "a"},
        expires_after=None,
        embedding_model="",
        embedding_dimensions=0,
    )
    upload = core.files.begin_upload(ALICE, "notes.txt", "assistants", "")
    await asyncio.to_thread(upload.write, TEXT.encode())
    file_id = (await upload.finish()).id
    attached = await core.store_files.create(
        ALICE, store.id, file_id, {"kind": "notes"}, AUTO_CHUNKING
    )
    assert attached.status is FileStatus.IN_PROGRESS
    assert await _completed(core, store.id, file_id) is FileStatus.COMPLETED
    assert (await core.stores.get(ALICE, store.id)).file_counts.completed == 1

    request = check_search(["birch bark quiver"], 5, None, "none", 0.0)
    hits = await core.searcher.search(ALICE, store.id, request)
    assert [h.file_id for h in hits][:1] == [file_id]
    assert any("birch bark" in h.text for h in hits)
    assert hits[0].attributes == {"kind": "notes"}

    # Keyword and hybrid ranking: the per-store tantivy index, built from the chunk rows.
    hybrid = await core.searcher.search(
        ALICE, store.id, check_search(["birch bark quiver"], 5, None, "", 0.0)
    )
    assert [h.file_id for h in hybrid][:1] == [file_id]
    assert hybrid[0].score > hits[0].score * 0.5

    await core.file_deletion.delete(ALICE, file_id)
    assert (await core.stores.get(ALICE, store.id)).file_counts.total == 0
    assert await core.searcher.search(ALICE, store.id, request) == []


def test_an_unreachable_postgresql_at_start_is_a_clear_error(tmp_path: Path) -> None:
    from tests.support.serve import free_port

    started = time.monotonic()
    with pytest.raises(ValueError, match="--database: cannot connect"):
        open_storage(f"postgresql://quiver@127.0.0.1:{free_port()}/quiver", tmp_path)
    assert time.monotonic() - started < 15


def test_a_dropped_connection_is_storage_unavailable(pg_url: str) -> None:
    """A statement on a connection the server closed is StorageUnavailable (UNAVAILABLE at
    the edges), and the next call gets a working connection."""
    storage = open_storage(pg_url, Path("/unused"))
    try:
        with storage.transaction() as tx:
            pid = storage.jobs.lease(tx, "x", "y")  # opens the pooled connection
            assert pid is None
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StorageUnavailable):
            for _ in range(20):  # every idle pooled connection was terminated
                storage.stores.get("vs_x", "t", "s")
        deadline = time.monotonic() + 10
        while True:
            try:
                assert storage.stores.get("vs_x", "t", "s") is None
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        storage.close()


@pytest.mark.slow
async def test_a_postgresql_restart_answers_unavailable_then_serves_again(
    tmp_path: Path,
) -> None:
    """Its own PostgreSQL server (killed and restarted): calls fail UNAVAILABLE (not
    INTERNAL) while it is down; the pool reconnects once it is back."""
    from quiver.server.app import QuiverServer

    from tests.support.inproc import _tenant, keyed

    pg_root = Path(tempfile.mkdtemp(prefix="quiver-pg-"))  # see tests/support/pg_fixtures
    server_pg = PostgresServer.start(pg_root / "cluster")
    try:
        settings, keys = keyed(
            Settings(
                listen="127.0.0.1:0",
                http_listen="off",
                data_dir=tmp_path / "data",
                ingest_workers=1,
                database=server_pg.url,
            )
        )
        server = QuiverServer(settings)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        alice = _tenant("alice", keys["alice"], channel)
        try:
            created = await alice.stores.CreateVectorStore(
                vector_stores_pb2.CreateVectorStoreRequest(name="before"),
                metadata=alice.metadata,
            )
            get = vector_stores_pb2.GetVectorStoreRequest(vector_store_id=created.vector_store.id)
            await asyncio.to_thread(server_pg.kill)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await alice.stores.GetVectorStore(get, metadata=alice.metadata, timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
            await asyncio.to_thread(server_pg.restart)
            deadline = time.monotonic() + 30
            while True:
                try:
                    reply = await alice.stores.GetVectorStore(
                        get, metadata=alice.metadata, timeout=10
                    )
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    assert time.monotonic() < deadline, "not served again after the restart"
                    await asyncio.sleep(0.2)
            assert reply.vector_store.name == "before"
        finally:
            await channel.close(None)
            await server.stop(grace=1.0)
    finally:
        server_pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


@pytest.mark.slow
async def test_a_batch_survives_a_postgresql_restart_mid_way(tmp_path: Path) -> None:
    """PostgreSQL killed while a batch ingests and restarted a few seconds later: the files
    caught by the outage are tried again, the batch completes with every file completed
    once, and the watch sequence equals the number of files."""
    from quiver.server.app import QuiverServer
    from quiver.v1 import file_batches_pb2

    from tests.support.batch_helpers import create_batch, create_store, prose, upload_all
    from tests.support.inproc import _tenant, keyed

    pg_root = Path(tempfile.mkdtemp(prefix="quiver-pg-"))
    server_pg = PostgresServer.start(pg_root / "cluster")
    try:
        settings, keys = keyed(
            Settings(
                listen="127.0.0.1:0",
                http_listen="off",
                data_dir=tmp_path / "data",
                ingest_workers=1,
                database=server_pg.url,
            )
        )
        server = QuiverServer(settings)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        alice = _tenant("alice", keys["alice"], channel)
        try:
            store = await create_store(alice, name="outage")
            docs = [(f"o{i}.txt", prose(200 + i, 20_000).encode()) for i in range(16)]
            file_ids = await upload_all(alice, docs)
            batch = await create_batch(alice, store.id, file_ids)
            get = file_batches_pb2.GetFileBatchRequest(vector_store_id=store.id, batch_id=batch.id)
            while True:  # some done, some not: the outage hits the batch mid-way
                reply = await alice.batches.GetFileBatch(get, metadata=alice.metadata)
                if reply.file_batch.file_counts.completed >= 2:
                    break
                await asyncio.sleep(0.05)
            assert reply.file_batch.file_counts.in_progress > 0
            await asyncio.to_thread(server_pg.kill)
            await asyncio.sleep(3)
            await asyncio.to_thread(server_pg.restart)
            deadline = time.monotonic() + 180
            while True:
                try:
                    reply = await alice.batches.GetFileBatch(
                        get, metadata=alice.metadata, timeout=10
                    )
                    if reply.file_batch.file_counts.in_progress == 0:
                        break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                assert time.monotonic() < deadline, f"stuck: {reply.file_batch.file_counts}"
                await asyncio.sleep(0.25)
            counts = reply.file_batch.file_counts
            assert (counts.completed, counts.failed, counts.total) == (16, 0, 16)
            assert reply.file_batch.status == file_batches_pb2.FILE_BATCH_STATUS_COMPLETED
            storage = open_storage(server_pg.url, tmp_path)
            try:
                row = storage.batches.get(batch.id)
                assert row is not None and row.sequence == 16  # one change per file
                by_file = storage.chunks.ids_by_file(store.id)
                assert set(by_file) == set(file_ids)
            finally:
                storage.close()
        finally:
            await channel.close(None)
            await server.stop(grace=1.0)
    finally:
        server_pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)
