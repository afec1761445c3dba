"""A database made before the store commit sequence (no ``commit_seq`` columns, nor their
index) opened by this version, on both backends: the columns are added at open, the files
completed before count as at or below the counter (0), a full catch-up indexes them, and a
file completed afterwards is caught up by the sequence alone (no full reconcile)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import psycopg
import pytest
from quiver.server.core.index_sync import IndexSync
from quiver.server.core.models import AUTO_CHUNKING, FileStatus
from quiver.server.index.manager import IndexManager
from quiver.server.storage.choice import open_storage
from quiver.server.storage.interfaces import Storage
from quiver.server.storage.rows import Owner, StoreRow

from tests.support.elsewhere import unit_vectors
from tests.support.pg_fixtures import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

DIM = 8
STORE = "vs_old"


def complete(storage: Storage, file_id: str, chunks: int, *, stamp: bool) -> list[int]:
    """Attaches and completes one file of ``chunks`` chunks; ``stamp``: with the commit
    sequence, as this version's completion does (else as the previous version did)."""
    with storage.transaction() as tx:
        generation = storage.store_files.attach(
            tx, STORE, file_id, "t", "s", 0, AUTO_CHUNKING, {}, None
        )
    owner = Owner(STORE, file_id, generation, None, "t", "s")
    vectors = unit_vectors(chunks, DIM, len(file_id) + chunks)
    texts = [f"{file_id} {i}" for i in range(chunks)]
    ids = storage.chunks.insert_slice(owner, texts, [1] * chunks, vectors, 0, chunks)
    with storage.transaction() as tx:
        storage.store_files.set_status(tx, STORE, file_id, FileStatus.COMPLETED, None, 1)
        if stamp:
            storage.store_files.mark_committed(tx, STORE, file_id)
    return [int(i) for i in ids]


def drop_commit_seq(database: str, data_dir: Path) -> None:
    """What the previous schema lacked."""
    statements = [
        "DROP INDEX vector_store_files_by_commit",
        "ALTER TABLE vector_store_files DROP COLUMN commit_seq",
        "ALTER TABLE vector_stores DROP COLUMN commit_seq",
    ]
    if database:
        with psycopg.connect(database, autocommit=True) as pg:
            for statement in statements:
                pg.execute(statement)
        return
    lite = sqlite3.connect(data_dir / "quiver.sqlite3")
    try:
        for statement in statements:
            lite.execute(statement)
        lite.commit()
    finally:
        lite.close()


def columns(database: str, data_dir: Path) -> set[str]:
    if database:
        with psycopg.connect(database, autocommit=True) as pg:
            rows = pg.execute(
                "SELECT table_name || '.' || column_name FROM information_schema.columns "
                "WHERE column_name = 'commit_seq'"
            ).fetchall()
        return {str(r[0]) for r in rows}
    lite = sqlite3.connect(data_dir / "quiver.sqlite3")
    try:
        return {
            f"{table}.commit_seq"
            for table in ("vector_stores", "vector_store_files")
            if "commit_seq" in {r[1] for r in lite.execute(f"PRAGMA table_info({table})")}
        }
    finally:
        lite.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_of_the_previous_schema_is_migrated_at_open(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = str(request.getfixturevalue("pg_url")) if backend == "postgresql" else ""
    storage = open_storage(database, tmp_path)
    try:
        with storage.transaction() as tx:
            storage.stores.insert(
                tx, StoreRow(STORE, "t", "s", "", 0, 0, None, None, {}, "hash", DIM, True)
            )
        before = complete(storage, "file_old", 5, stamp=False)
    finally:
        storage.close()
    drop_commit_seq(database, tmp_path)
    assert columns(database, tmp_path) == set()

    storage = open_storage(database, tmp_path)  # this version: migrates
    try:
        assert columns(database, tmp_path) == {
            "vector_stores.commit_seq",
            "vector_store_files.commit_seq",
        }
        assert storage.index_sync.commit_counter(STORE) == 0
        assert storage.index_sync.committed_after(STORE, 0, 10) == []  # old files: at 0
        indexes = IndexManager(tmp_path / "indexes", m=16, ef_construction=100, ef_search=64)
        sync = IndexSync(storage.index_sync, indexes, lambda: 1)
        report = sync.catch_up(STORE, DIM)
        assert (report.full, report.added, report.watermark) == (True, 5, 0)
        after = complete(storage, "file_new", 3, stamp=True)
        assert storage.index_sync.committed_after(STORE, 0, 10) == [("file_new", 1)]
        report = sync.catch_up(STORE, DIM)
        assert (report.full, report.added, report.watermark) == (False, 3, 1)
        index = indexes.get(STORE, DIM)
        assert index.holds(np.asarray(before + after)).all()
    finally:
        storage.close()


def test_opening_a_current_database_takes_no_table_lock(pg_url: str, tmp_path: Path) -> None:
    """Every replica's start migrates the schema: on a database that is already current it
    must run no DDL, whose ACCESS EXCLUSIVE locks (``ALTER TABLE … IF NOT EXISTS`` takes one
    even when the column is there) wait for every other replica's writes and can deadlock
    with them (a replica failed to start so in ``make cluster-test``). Here another replica's
    transaction holds the write lock its writes take, and the database's sessions give up
    waiting for a lock after 2 s (this test's own database)."""
    open_storage(pg_url, tmp_path / "first").close()  # the schema made
    with psycopg.connect(pg_url, autocommit=True) as admin:
        name = admin.execute("SELECT current_database()").fetchone()
        assert name is not None
        admin.execute(f"ALTER DATABASE {name[0]} SET lock_timeout = '2s'")
    with psycopg.connect(pg_url) as other:
        other.execute("LOCK TABLE vector_stores, vector_store_files IN ROW EXCLUSIVE MODE")
        storage = open_storage(pg_url, tmp_path / "second")
        storage.close()
