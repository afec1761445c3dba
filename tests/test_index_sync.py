"""Read-your-writes for a store's index (core/index_sync.py) on a real SQLite database and
hnswlib index: chunks another replica committed, written here as that replica would leave
them in the shared database (rows only, never this replica's index), and the replicas table
(storage/replica_rows.py)."""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from quiver.server.core import index_sync
from quiver.server.core.attribute_index import AttributeIndex
from quiver.server.core.filters import RawFilter, parse_filter
from quiver.server.core.index_sync import IndexSync
from quiver.server.index.keyword_manager import KeywordIndexes
from quiver.server.index.manager import IndexManager
from quiver.server.storage.chunk_rows import ChunkRows
from quiver.server.storage.database import Database
from quiver.server.storage.index_sync_rows import IndexSyncRows
from quiver.server.storage.replica_rows import ReplicaRows
from quiver.server.storage.store_file_rows import StoreFileRows

from tests.support import elsewhere
from tests.support.elsewhere import add_store, unit_vectors
from tests.support.tmpfs import fill, small_tmpfs

DIM = 16
STORE = "vs_sync"


class Epoch:
    def __init__(self) -> None:
        self.value = 1

    def __call__(self) -> int:
        return self.value


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "quiver.sqlite3")
    add_store(database, STORE, DIM)
    return database


def commit_file(db: Database, file_id: str, chunks: int, status: str = "completed") -> list[int]:
    """What another replica leaves in the database for one file of ``chunks`` chunks."""
    return elsewhere.commit_file(
        db, STORE, file_id, unit_vectors(chunks, DIM, zlib.crc32(file_id.encode())), status
    )


def set_status(db: Database, file_id: str, status: str) -> None:
    with db.transaction() as conn:
        conn.execute(
            "UPDATE vector_store_files SET status = ? WHERE vector_store_id = ? AND file_id = ?",
            (status, STORE, file_id),
        )
        if status == "completed":
            elsewhere.stamp_committed(conn, STORE, file_id)


def delete_file(db: Database, file_id: str) -> None:
    with db.transaction() as conn:
        conn.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))
        conn.execute("DELETE FROM vector_store_files WHERE file_id = ?", (file_id,))


def stored_vector(db: Database, chunk_id: int) -> np.ndarray:
    blob = db.execute("SELECT vector FROM chunks WHERE id = ?", (chunk_id,)).fetchone()[0]
    return np.frombuffer(blob, dtype=np.float32)


class Told:
    """What the attribute index is told."""

    def __init__(self) -> None:
        self.changed: list[tuple[str, set[str]]] = []
        self.forgotten: list[str] = []

    def changed_files(self, store_id: str, file_ids: Iterable[str]) -> None:
        self.changed.append((store_id, set(file_ids)))

    def forget(self, store_id: str) -> None:
        self.forgotten.append(store_id)


class Recorder:
    def __init__(self, told: Told) -> None:
        self.told = told

    def changed(self, store_id: str, file_ids: Iterable[str]) -> None:
        self.told.changed_files(store_id, file_ids)

    def forget(self, store_id: str) -> None:
        self.told.forget(store_id)


def make(
    tmp_path: Path, db: Database, told: Told | None = None
) -> tuple[IndexSync, IndexManager, Epoch]:
    indexes = IndexManager(tmp_path / "indexes", m=16, ef_construction=100, ef_search=64)
    epoch = Epoch()
    files = Recorder(told) if told is not None else None
    return IndexSync(IndexSyncRows(db), indexes, epoch, files=files), indexes, epoch


def test_chunks_committed_elsewhere_are_searchable_after_catch_up(
    tmp_path: Path, db: Database
) -> None:
    sync, indexes, _ = make(tmp_path, db)
    first = commit_file(db, "file-1", 5)
    report = sync.catch_up(STORE, DIM)
    assert indexes.get(STORE, DIM).holds(first).all()
    assert (report.added, report.full, report.watermark) == (5, True, 1)  # commit sequence
    later = commit_file(db, "file-2", 3)
    index = indexes.get(STORE, DIM)
    labels, _ = index.knn(stored_vector(db, later[1]), 1)
    assert int(labels[0][0]) != later[1]  # not in the index yet
    report = sync.catch_up(STORE, DIM)
    assert (report.added, report.full, report.watermark) == (3, False, 2)
    labels, distances = index.knn(stored_vector(db, later[1]), 1)
    assert int(labels[0][0]) == later[1] and distances[0][0] < 1e-4
    assert sync.catch_up(STORE, DIM).added == 0  # nothing new: nothing added


def test_a_file_still_in_progress_is_added_once_it_completes(tmp_path: Path, db: Database) -> None:
    sync, indexes, _ = make(tmp_path, db)
    done = commit_file(db, "file-1", 2)
    pending = commit_file(db, "file-2", 4, status="in_progress")
    after = commit_file(db, "file-3", 2)
    report = sync.catch_up(STORE, DIM)
    assert report.added == 4 and report.watermark == 2  # file-1 and file-3 completed
    index = indexes.get(STORE, DIM)
    assert not index.holds(pending).any() and index.holds(after).all() and index.holds(done).all()
    set_status(db, "file-2", "completed")
    report = sync.catch_up(STORE, DIM)
    assert report.added == 4 and report.watermark == 3  # file-2 completed third
    assert index.holds(pending).all()


def test_a_new_epoch_reconciles_in_full_and_drops_chunks_deleted_elsewhere(
    tmp_path: Path, db: Database
) -> None:
    sync, indexes, epoch = make(tmp_path, db)
    gone = commit_file(db, "file-1", 3)
    kept = commit_file(db, "file-2", 3)
    sync.catch_up(STORE, DIM)
    delete_file(db, "file-1")  # by another replica, while this one owned the store
    report = sync.catch_up(STORE, DIM)
    assert not report.full and report.removed == 0  # same epoch: only new chunks are read
    epoch.value += 1  # the live replicas changed
    report = sync.catch_up(STORE, DIM)
    assert report.full and report.removed == 3 and report.added == 0
    index = indexes.get(STORE, DIM)
    assert not index.holds(gone).any() and index.holds(kept).all()
    assert index.labels().tolist() == kept


def test_the_attribute_index_hears_of_files_completed_elsewhere(
    tmp_path: Path, db: Database
) -> None:
    told = Told()
    sync, _, epoch = make(tmp_path, db, told)
    commit_file(db, "file-1", 2)
    sync.catch_up(STORE, DIM)
    assert told.forgotten == [STORE]  # a full reconcile: rebuilt at the next filtered search
    commit_file(db, "file-2", 2)
    commit_file(db, "file-3", 1)
    sync.catch_up(STORE, DIM)
    assert told.changed == [(STORE, {"file-2", "file-3"})]
    sync.catch_up(STORE, DIM)
    assert len(told.changed) == 1  # nothing new, nothing told
    epoch.value += 1
    sync.catch_up(STORE, DIM)
    assert told.forgotten == [STORE, STORE]


def test_the_replicas_table_keeps_live_rows_by_heartbeat(db: Database) -> None:
    rows = ReplicaRows(db)
    rows.beat("a", "10.0.0.1:1", 100.0)
    rows.beat("b", "10.0.0.2:1", 100.0)
    rows.beat("a", "10.0.0.1:2", 105.0)  # a heartbeat updates the row (and its address)
    assert [(r.replica_id, r.address, r.heartbeat_at) for r in rows.live(101.0)] == [
        ("a", "10.0.0.1:2", 105.0)
    ]
    assert [r.replica_id for r in rows.live(100.0)] == ["a", "b"]
    rows.leave("a")
    assert [r.replica_id for r in rows.live(0.0)] == ["b"]
    assert rows.forget_before(101.0) == 1
    assert rows.live(0.0) == []
    started = sqlite3.connect(db.path).execute("SELECT COUNT(*) FROM replicas").fetchone()[0]
    assert started == 0


def test_a_big_rebuild_runs_in_the_background_and_is_reported_once(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_sync, "INLINE_ADDS", 5)
    sync, indexes, epoch = make(tmp_path, db)
    small = commit_file(db, "file-1", 4)
    assert sync.prepare(STORE, DIM) is None  # 4 to add: inline
    assert indexes.get(STORE, DIM).holds(small).all()
    big = commit_file(db, "file-2", 30)
    epoch.value += 1  # e.g. the owner died: a full reconcile, 30 to add
    rebuilding = sync.prepare(STORE, DIM)
    assert rebuilding is not None
    assert rebuilding.completed.tolist() == small + big  # what a search ranks meanwhile
    again = sync.prepare(STORE, DIM)
    assert again is None or again is rebuilding  # never a second rebuild of the store
    rebuilding.done.result(timeout=60)
    assert indexes.get(STORE, DIM).holds(big).all()
    assert sync.prepare(STORE, DIM) is None
    assert sync.catch_up(STORE, DIM).added == 0
    sync.close()


def test_a_searched_index_is_reconciled_in_full_now_and_then(tmp_path: Path, db: Database) -> None:
    """What the watermark cannot see (here: a file deleted elsewhere) is caught up within
    ``full_every_s``, at the same epoch."""
    indexes = IndexManager(tmp_path / "indexes", m=16, ef_construction=100, ef_search=64)
    sync = IndexSync(IndexSyncRows(db), indexes, lambda: 1, full_every_s=0.3)
    gone = commit_file(db, "file-1", 3)
    assert sync.catch_up(STORE, DIM).full
    delete_file(db, "file-1")
    assert not sync.catch_up(STORE, DIM).full
    assert indexes.get(STORE, DIM).holds(gone).all()
    time.sleep(0.35)
    report = sync.catch_up(STORE, DIM)
    assert report.full and report.removed == 3
    assert not sync.catch_up(STORE, DIM).full


def with_keywords(
    tmp_path: Path, keyword_root: Path, db: Database
) -> tuple[IndexSync, IndexManager, KeywordIndexes, Epoch]:
    """A catch-up that keeps a keyword index (under ``keyword_root``) too; close the keyword
    indexes when done."""
    indexes = IndexManager(tmp_path / "indexes", m=16, ef_construction=100, ef_search=64)
    keywords = KeywordIndexes(keyword_root, commit_seconds=60.0, max_pending=10_000)
    epoch = Epoch()
    sync = IndexSync(
        IndexSyncRows(db),
        indexes,
        epoch,
        keywords=keywords,
        keyword_rows=ChunkRows(db).keyword_rows,
    )
    return sync, indexes, keywords, epoch


def test_the_keyword_index_follows_chunks_committed_elsewhere(tmp_path: Path, db: Database) -> None:
    """Catch-up adds the same chunks to the store's keyword (tantivy) index, and a full pass
    at a new epoch makes it hold exactly the completed chunks."""
    sync, _, keywords, epoch = with_keywords(tmp_path, tmp_path / "keyword", db)
    try:
        gone = commit_file(db, "file-1", 3)
        sync.catch_up(STORE, DIM)  # the first pass is full
        assert keywords.searchable(STORE).chunk_ids().tolist() == gone
        later = commit_file(db, "file-2", 2)
        assert not sync.catch_up(STORE, DIM).full
        assert sorted(keywords.searchable(STORE).chunk_ids().tolist()) == gone + later
        delete_file(db, "file-1")  # by another replica
        epoch.value += 1
        assert sync.catch_up(STORE, DIM).full
        assert keywords.searchable(STORE).chunk_ids().tolist() == later
    finally:
        keywords.close()


def test_a_full_disk_under_the_keyword_index_does_not_fail_the_catch_up(
    tmp_path: Path, db: Database
) -> None:
    """A real full disk (a small tmpfs, filled) under the keyword index: the catch-up still
    brings the vector index up to date and warns instead of raising (a search would answer
    INTERNAL); the keyword index answers from its last commit, each catch-up is a full pass
    until it has caught up, and once there is room again it holds every completed chunk."""
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        sync, indexes, keywords, epoch = with_keywords(tmp_path, disk / "keyword", db)
        try:
            first = commit_file(db, "file-1", 3)
            assert sync.catch_up(STORE, DIM).full
            assert keywords.searchable(STORE).chunk_ids().tolist() == first
            ballast = fill(disk)
            later = commit_file(db, "file-2", 30)
            epoch.value += 1  # a full pass: the keyword index is reconciled, and cannot be
            report = sync.catch_up(STORE, DIM)
            assert report.full and report.added == 30
            assert indexes.get(STORE, DIM).holds(np.asarray(later)).all()
            assert sync.keyword_failures == 1
            assert keywords.searchable(STORE).chunk_ids().tolist() == first
            assert sync.catch_up(STORE, DIM).full  # tried again, in full
            assert sync.keyword_failures == 2
            ballast.unlink()
            assert sync.catch_up(STORE, DIM).full
            assert sync.keyword_failures == 2
            assert sorted(keywords.searchable(STORE).chunk_ids().tolist()) == first + later
            assert not sync.catch_up(STORE, DIM).full  # caught up: back to the watermark
        finally:
            keywords.close()


def set_attributes(db: Database, file_id: str, attributes: str) -> None:
    """Another replica updates a completed file's attributes (no chunk changes)."""
    db.execute(
        "UPDATE vector_store_files SET attributes = ? WHERE vector_store_id = ? AND file_id = ?",
        (attributes, STORE, file_id),
    )


def test_a_filtered_search_tells_the_attribute_index_of_file_changes_made_elsewhere(
    tmp_path: Path, db: Database
) -> None:
    told = Told()
    sync, _, _ = make(tmp_path, db, told)
    for name in ("file-1", "file-2", "file-3"):
        commit_file(db, name, 2)
    assert sync.prepare(STORE, DIM) is None
    told.forgotten.clear()
    assert sync.prepare(STORE, DIM, filtered=True) is None
    assert told.forgotten == [STORE]  # its first look: whatever was held is not trusted
    assert sync.sync_files(STORE) == set()  # nothing changed since
    set_attributes(db, "file-1", '{"k": "v"}')  # no chunk changes: the watermark cannot see it
    sync.prepare(STORE, DIM)
    assert told.changed == []  # an unfiltered search does not read the files' states
    sync.prepare(STORE, DIM, filtered=True)
    assert told.changed == [(STORE, {"file-1"})]
    delete_file(db, "file-2")  # detached elsewhere
    set_status(db, "file-3", "in_progress")  # re-queued elsewhere
    commit_file(db, "file-4", 1, status="in_progress")  # attached elsewhere
    assert sync.catch_up(STORE, DIM, filtered=True).added == 0
    assert told.changed[-1] == (STORE, {"file-2", "file-3", "file-4"})
    assert len(told.changed) == 2
    sync.forget(STORE)  # the store deleted here: the next filtered search looks afresh
    sync.prepare(STORE, DIM, filtered=True)
    assert told.forgotten[-1] == STORE and len(told.changed) == 2


def test_the_owners_filtered_selection_reads_attribute_writes_made_elsewhere(
    tmp_path: Path, db: Database
) -> None:
    """With the real attribute index: a selection cached before another replica changed a
    file's attributes (or detached it) is right at the next filtered search's catch-up."""
    attributes = AttributeIndex(StoreFileRows(db), ChunkRows(db), max_stores=4)
    indexes = IndexManager(tmp_path / "indexes", m=16, ef_construction=100, ef_search=64)
    sync = IndexSync(IndexSyncRows(db), indexes, Epoch(), files=attributes)
    ones = commit_file(db, "file-1", 2)
    twos = commit_file(db, "file-2", 3)
    set_attributes(db, "file-1", '{"tier": "gold"}')
    gold = parse_filter(RawFilter("eq", "tier", "gold", True, []))

    def select() -> tuple[list[str], list[int]]:
        sync.prepare(STORE, DIM, filtered=True)
        found = attributes.select(STORE, gold)
        return found.files, sorted(int(i) for i in found.labels)

    assert select() == (["file-1"], ones)
    set_attributes(db, "file-2", '{"tier": "gold"}')  # elsewhere
    assert attributes.select(STORE, gold).files == ["file-1"]  # the cache alone lags
    assert select() == (["file-1", "file-2"], sorted(ones + twos))
    set_attributes(db, "file-1", '{"tier": "silver"}')
    assert select() == (["file-2"], twos)
    delete_file(db, "file-2")
    assert select() == ([], [])
