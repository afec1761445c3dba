"""The hnswlib vector index and the readers/writer lock."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt
import pytest
from quiver.server.index import RWLock, VectorIndex
from quiver.server.index.hnsw import INITIAL_CAPACITY
from quiver.server.index.integrity import CorruptIndex, sidecar_path
from quiver.server.index.manager import IndexManager

from tests.support.index_damage import DAMAGE
from tests.support.tmpfs import fill, small_tmpfs

DIM = 64
Matrix = npt.NDArray[np.float32]


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> Matrix:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    normalised: Matrix = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalised


@pytest.fixture(scope="module")
def data() -> Matrix:
    return unit_vectors(5000)


@pytest.fixture(scope="module")
def queries() -> Matrix:
    return unit_vectors(100, seed=1)


@pytest.fixture
def full_index(tmp_path: Path, data: Matrix) -> VectorIndex:
    index = VectorIndex.open(tmp_path / "store.hnsw", DIM, ef_search=200)
    index.add(np.arange(len(data), dtype=np.int64), data)
    return index


def brute_force(data: Matrix, queries: Matrix, k: int) -> npt.NDArray[np.int64]:
    return np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :k]


def recall(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return sum(hits) / truth.size


# --- VectorIndex -------------------------------------------------------------------------


def test_recall_against_brute_force(full_index: VectorIndex, data: Matrix, queries: Matrix) -> None:
    labels, distances = full_index.knn(queries, 10)
    assert labels.shape == distances.shape == (100, 10)
    assert labels.dtype == np.int64 and distances.dtype == np.float32
    assert recall(labels, brute_force(data, queries, 10)) >= 0.95
    # Cosine distances, nearest first.
    expected = 1.0 - np.einsum("qd,qkd->qk", queries, data[labels])
    np.testing.assert_allclose(distances, expected, atol=1e-4)
    assert (np.diff(distances, axis=1) >= 0).all()


def test_per_call_ef(full_index: VectorIndex, data: Matrix, queries: Matrix) -> None:
    truth = brute_force(data, queries, 10)
    exact, _ = full_index.knn(queries, 10, ef=1000)
    assert recall(exact, truth) >= 0.99
    assert full_index.ef_search == 200  # restored after the call


def test_save_and_reopen(full_index: VectorIndex, queries: Matrix, tmp_path: Path) -> None:
    full_index.mark_deleted([3, 4])
    before = full_index.knn(queries, 10)
    full_index.save()
    # No .tmp left; the sidecar vouches for the file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.hnsw", "store.hnsw.json"]

    reopened = VectorIndex.open(tmp_path / "store.hnsw", DIM, ef_search=200)
    assert reopened.ef_search == 200
    assert reopened.live_count == 4998 and reopened.deleted_count == 2
    assert reopened.capacity >= 5000
    np.testing.assert_array_equal(reopened.labels(), full_index.labels())
    after = reopened.knn(queries, 10)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_allclose(after[1], before[1], atol=1e-6)


def test_hnswlib_resets_ef_on_load(tmp_path: Path) -> None:
    """Why ``open`` sets ef again: hnswlib's ``load_index`` forgets it."""
    saved = VectorIndex.open(tmp_path / "raw.bin", 8, ef_search=77)
    saved.add(np.arange(5), unit_vectors(5, 8))
    saved.save()
    loaded = hnswlib.Index(space="cosine", dim=8)
    loaded.load_index(str(tmp_path / "raw.bin"))
    assert loaded.ef == 10

    index = VectorIndex.open(tmp_path / "raw.bin", 8, ef_search=77)
    assert index.ef_search == 77 and index.live_count == 5


def test_open_rejects_wrong_dimension_and_clears_stale_tmp(tmp_path: Path) -> None:
    path = tmp_path / "store.hnsw"
    index = VectorIndex.open(path, 16)
    index.add(np.array([1]), unit_vectors(1, 16))
    index.save()
    path.with_suffix(".tmp").write_bytes(b"half-written")
    with pytest.raises(ValueError, match="dim 16, not 32"):
        VectorIndex.open(path, 32)
    assert not path.with_suffix(".tmp").exists()
    assert VectorIndex.open(path, 16).labels().tolist() == [1]


def small_saved_index(path: Path, n: int = 200, dim: int = 16) -> VectorIndex:
    index = VectorIndex.open(path, dim)
    index.add(np.arange(n), unit_vectors(n, dim))
    index.mark_deleted([7])
    index.save()
    return index


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_open_refuses_a_damaged_file_before_hnswlib_reads_it(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "store.hnsw"
    small_saved_index(path)
    change, message = DAMAGE[damage]
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(CorruptIndex, match=message):
        VectorIndex.open(path, 16)


def test_open_refuses_an_index_without_its_sidecar(tmp_path: Path) -> None:
    """An index saved by an older version (no sidecar) is not trusted: it is rebuilt."""
    path = tmp_path / "store.hnsw"
    small_saved_index(path)
    sidecar_path(path).unlink()
    with pytest.raises(CorruptIndex, match="no checksum file"):
        VectorIndex.open(path, 16)
    path.write_bytes(b"")
    sidecar_path(path).write_text("{not json")
    with pytest.raises(CorruptIndex, match="unreadable"):
        VectorIndex.open(path, 16)


def test_open_checks_the_labels_against_the_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "store.hnsw"
    small_saved_index(path)
    sidecar = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({**sidecar, "labels_sha256": "0" * 64}))
    with pytest.raises(CorruptIndex, match="labels"):
        VectorIndex.open(path, 16)
    sidecar_path(path).write_text(json.dumps({**sidecar, "deleted_count": 0}))
    with pytest.raises(CorruptIndex, match="deleted"):
        VectorIndex.open(path, 16)
    sidecar_path(path).write_text(json.dumps(sidecar))
    assert VectorIndex.open(path, 16).live_count == 199


def test_a_save_on_a_full_disk_keeps_the_previous_index(tmp_path: Path) -> None:
    """hnswlib writes a truncated file on a full disk and says nothing: the save checks what
    was written and refuses to rename it over the good index."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        path = disk / "store.hnsw"
        index = small_saved_index(path, n=100, dim=64)
        before = index.knn(unit_vectors(3, 64, seed=5), 5)
        saved = (path.read_bytes(), sidecar_path(path).read_bytes())
        index.add(np.arange(100, 1100), unit_vectors(1000, 64, seed=3))  # ~0.5 MB more
        fill(disk, leave=64 * 1024)
        with pytest.raises((CorruptIndex, OSError)):
            index.save()
        assert (path.read_bytes(), sidecar_path(path).read_bytes()) == saved
        assert sorted(p.name for p in disk.iterdir()) == [
            "ballast",
            "store.hnsw",
            "store.hnsw.json",
        ]
        reopened = VectorIndex.open(path, 64)
        assert reopened.live_count == 99
        after = reopened.knn(unit_vectors(3, 64, seed=5), 5)
        np.testing.assert_array_equal(after[0], before[0])
        (disk / "ballast").unlink()
        index.save()  # space is back: the next save goes through
        assert VectorIndex.open(path, 64).live_count == 1099


def test_reconcile_rebuilds_a_damaged_index_from_the_stored_vectors(tmp_path: Path) -> None:
    vectors = unit_vectors(300, 16, seed=4)
    stored = np.arange(300, dtype=np.int64)
    manager = IndexManager(tmp_path, m=16, ef_construction=200, ef_search=400)
    manager.reconcile("vs_a", 16, stored, lambda ids: vectors[ids])
    assert manager.save_all() == 0
    queries = unit_vectors(5, 16, seed=6)
    before = manager.get("vs_a", 16).knn(queries, 10)
    for change, _ in DAMAGE.values():
        path = manager.path_for("vs_a")
        path.write_bytes(change(path.read_bytes()))
        again = IndexManager(tmp_path, m=16, ef_construction=200, ef_search=400)
        report = again.reconcile("vs_a", 16, stored, lambda ids: vectors[ids])
        assert report.rebuilt and report.added == 300
        after = again.get("vs_a", 16).knn(queries, 10)
        np.testing.assert_array_equal(after[0], before[0])
        assert again.save_all() == 0
    sidecar_path(manager.path_for("vs_a")).unlink()  # as an older version left it
    again = IndexManager(tmp_path, m=16, ef_construction=200, ef_search=400)
    assert again.reconcile("vs_a", 16, stored, lambda ids: vectors[ids]).rebuilt
    again.drop("vs_a")
    assert list(tmp_path.iterdir()) == []


def test_open_missing_file_gives_empty_index(tmp_path: Path) -> None:
    index = VectorIndex.open(tmp_path / "none.hnsw", DIM)
    assert index.live_count == 0 and index.capacity == INITIAL_CAPACITY
    labels, distances = index.knn(unit_vectors(2), 5)
    assert labels.shape == distances.shape == (2, 0)
    index.save()  # an empty index round-trips too
    assert VectorIndex.open(tmp_path / "none.hnsw", DIM).live_count == 0


def test_mark_deleted(full_index: VectorIndex, data: Matrix) -> None:
    targets = np.array([10, 20, 30])
    assert set(full_index.knn(data[targets], 1)[0][:, 0].tolist()) == {10, 20, 30}
    full_index.mark_deleted(targets)
    full_index.mark_deleted([10, 999_999])  # already deleted, never added: ignored
    labels, _ = full_index.knn(data[targets], 10)
    assert not set(labels.ravel().tolist()) & {10, 20, 30}
    assert full_index.live_count == 4997 and full_index.deleted_count == 3
    live = full_index.labels()
    assert live.size == 4997 and not np.isin(targets, live).any()


def test_add_existing_label_replaces_vector(tmp_path: Path) -> None:
    vectors = unit_vectors(20, seed=3)
    index = VectorIndex.open(tmp_path / "i.hnsw", DIM)
    index.add(np.arange(10), vectors[:10])
    index.add(np.array([4]), vectors[15:16])  # same label, new vector
    assert index.live_count == 10
    labels, distances = index.knn(vectors[15], 1)
    assert labels[0, 0] == 4 and distances[0, 0] == pytest.approx(0.0, abs=1e-5)
    _, distances = index.knn(vectors[4], 1)
    assert distances[0, 0] > 1e-3  # the old vector of label 4 is gone

    # Adding a deleted label brings it back (hnswlib un-deletes and updates it).
    index.mark_deleted([7])
    index.add(np.array([7]), vectors[7:8])
    assert index.live_count == 10 and index.deleted_count == 0
    assert index.knn(vectors[7], 1)[0][0, 0] == 7


def test_duplicate_labels_in_one_batch_keep_the_last(tmp_path: Path) -> None:
    vectors = unit_vectors(3, seed=4)
    index = VectorIndex.open(tmp_path / "i.hnsw", DIM)
    index.add(np.array([5, 6, 5]), vectors)
    assert index.live_count == 2
    labels, distances = index.knn(vectors[2], 1)
    assert labels[0, 0] == 5 and distances[0, 0] == pytest.approx(0.0, abs=1e-5)


def test_filter(full_index: VectorIndex, data: Matrix, queries: Matrix) -> None:
    def even(label: int) -> bool:
        return label % 2 == 0

    labels, _ = full_index.knn(queries, 10, filter=even)
    assert labels.shape == (100, 10) and (labels % 2 == 0).all()
    even_data = data[::2]
    truth = brute_force(even_data, queries, 10) * 2
    assert recall(labels, truth) >= 0.95


def test_selective_filter_returns_fewer(full_index: VectorIndex, queries: Matrix) -> None:
    wanted = {11, 222, 3333}
    labels, distances = full_index.knn(queries[:4], 10, filter=lambda label: label in wanted)
    assert labels.shape == distances.shape == (4, 3)
    for row in labels:
        assert set(row.tolist()) == wanted
    assert np.isfinite(distances).all() and (np.diff(distances, axis=1) >= 0).all()

    nothing, _ = full_index.knn(queries[:2], 10, filter=lambda label: False)
    assert nothing.shape == (2, 0)


def test_hnswlib_raises_when_it_finds_fewer_than_k(tmp_path: Path) -> None:
    """Why ``knn`` caps k and retries: hnswlib raises instead of returning fewer."""
    raw = hnswlib.Index(space="cosine", dim=8)
    raw.init_index(max_elements=10)
    raw.add_items(unit_vectors(5, 8), np.arange(5))
    with pytest.raises(RuntimeError, match="contiguous 2D array"):
        raw.knn_query(unit_vectors(1, 8), k=6)
    with pytest.raises(RuntimeError, match="contiguous 2D array"):
        raw.knn_query(unit_vectors(1, 8), k=3, filter=lambda label: label < 2)


def test_k_larger_than_live_count(tmp_path: Path) -> None:
    vectors = unit_vectors(5, seed=5)
    index = VectorIndex.open(tmp_path / "i.hnsw", DIM)
    index.add(np.arange(5), vectors)
    index.mark_deleted([0])
    labels, distances = index.knn(vectors[1:3], 50)
    assert labels.shape == distances.shape == (2, 4)
    assert sorted(labels[0].tolist()) == [1, 2, 3, 4]


def test_resize_beyond_initial_capacity(tmp_path: Path) -> None:
    vectors = unit_vectors(3000, seed=6)
    index = VectorIndex.open(tmp_path / "i.hnsw", DIM, ef_construction=50)
    assert index.capacity == INITIAL_CAPACITY
    index.add(np.arange(INITIAL_CAPACITY), vectors[:INITIAL_CAPACITY])
    assert index.capacity == INITIAL_CAPACITY  # exactly full: no growth yet
    index.add(np.array([INITIAL_CAPACITY]), vectors[INITIAL_CAPACITY : INITIAL_CAPACITY + 1])
    assert index.capacity == int(INITIAL_CAPACITY * 1.5)
    index.add(np.arange(1025, 3000), vectors[1025:])
    assert index.capacity >= 3000 and index.live_count == 3000
    # Re-adding everything replaces in place: no growth.
    capacity = index.capacity
    index.add(np.arange(3000), vectors)
    assert index.capacity == capacity
    labels, _ = index.knn(vectors[2999], 1)
    assert labels[0, 0] == 2999


def test_input_validation(tmp_path: Path) -> None:
    index = VectorIndex.open(tmp_path / "i.hnsw", 8)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([1]), unit_vectors(1, 9))
    with pytest.raises(ValueError, match="labels for"):
        index.add(np.array([1, 2]), unit_vectors(1, 8))
    with pytest.raises(ValueError, match="non-negative"):
        index.add(np.array([-1]), unit_vectors(1, 8))
    with pytest.raises(ValueError, match="finite"):
        index.add(np.array([1]), np.full((1, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        index.knn(unit_vectors(1, 9), 1)
    with pytest.raises(ValueError, match="k must be positive"):
        index.knn(unit_vectors(1, 8), 0)


def test_concurrent_readers_and_writer(tmp_path: Path) -> None:
    vectors = unit_vectors(3000, seed=7)
    index = VectorIndex.open(tmp_path / "i.hnsw", DIM, ef_construction=50)
    index.add(np.arange(500), vectors[:500])
    errors: list[BaseException] = []
    stop = threading.Event()
    searches = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                query = vectors[rng.integers(0, 3000, size=4)]
                labels, _ = index.knn(query, 5, filter=(lambda x: x % 3 != 0) if seed else None)
                assert labels.shape[0] == 4
                index.labels()
                searches[0] += 1
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        try:
            for start in range(500, 3000, 250):
                index.add(np.arange(start, start + 250), vectors[start : start + 250])
                index.mark_deleted(np.arange(start - 500, start - 450))
                index.save()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    write_thread = threading.Thread(target=writer)
    write_thread.start()
    write_thread.join(timeout=60)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    assert not errors, errors
    assert searches[0] > 0
    assert index.live_count == 3000 - 500
    reopened = VectorIndex.open(tmp_path / "i.hnsw", DIM)
    np.testing.assert_array_equal(reopened.labels(), index.labels())


# --- RWLock ------------------------------------------------------------------------------


def run_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_rwlock_readers_share() -> None:
    lock = RWLock()
    both_inside = threading.Barrier(3, timeout=5)

    def read() -> None:
        with lock.read():
            both_inside.wait()  # only passes if both readers hold the lock together

    threads = [run_thread(read), run_thread(read)]
    both_inside.wait()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)


def test_rwlock_writer_excludes_readers_and_writers() -> None:
    lock = RWLock()
    entered: list[str] = []

    def read() -> None:
        with lock.read():
            entered.append("reader")

    def write() -> None:
        with lock.write():
            entered.append("writer")

    with lock.write():
        threads = [run_thread(read), run_thread(write)]
        time.sleep(0.1)
        assert entered == []
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(entered) == ["reader", "writer"]

    with lock.read():
        writer = run_thread(write)
        time.sleep(0.1)
        assert entered.count("writer") == 1  # the writer waits for the reader
    writer.join(timeout=5)
    assert entered.count("writer") == 2


def test_rwlock_prefers_writers() -> None:
    lock = RWLock()
    order: list[str] = []

    def write() -> None:
        with lock.write():
            order.append("writer")

    def late_read() -> None:
        with lock.read():
            order.append("late reader")

    with lock.read():
        writer = run_thread(write)
        deadline = time.monotonic() + 5
        while lock._waiting_writers == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # until the writer is queued behind our read lock
        reader = run_thread(late_read)
        time.sleep(0.1)
        assert order == []  # the late reader does not overtake the waiting writer
    writer.join(timeout=5)
    reader.join(timeout=5)
    assert order == ["writer", "late reader"]


def test_rwlock_release_without_acquire() -> None:
    lock = RWLock()
    with pytest.raises(RuntimeError):
        lock.release_read()
    with pytest.raises(RuntimeError):
        lock.release_write()
