"""What the repository calls the event loop makes cost on each storage: SQLite (the file
in a temporary directory) against PostgreSQL (a local server from tests/support/postgres.py,
over TCP on 127.0.0.1). Median and p99 of each call, in milliseconds.

    .venv/bin/python -m bench.storage_calls --rounds 300
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from quiver.server.core.models import AUTO_CHUNKING, FileStatus, StoredFile
from quiver.server.storage.choice import open_storage
from quiver.server.storage.interfaces import Storage
from quiver.server.storage.rows import Owner, StoreRow

from tests.support.postgres import PostgresServer

FILES = 50
CHUNKS_PER_FILE = 20
DIM = 256


def _fill(storage: Storage) -> list[int]:
    with storage.transaction() as tx:
        storage.stores.insert(
            tx, StoreRow("vs_1", "t", "s", "", 0, 0, None, None, {}, "hash", DIM, True)
        )
        storage.batches.insert(tx, "batch_1", "vs_1", "t", "s", 0, None, None)
        storage.batches.add_files(tx, "batch_1", [f"file_{i}" for i in range(FILES)])
        for i in range(FILES):
            storage.files.insert(
                tx, "t", "s", StoredFile(f"file_{i}", 10, 0, f"f{i}.txt", "assistants", "0" * 64)
            )
            storage.store_files.attach(
                tx, "vs_1", f"file_{i}", "t", "s", 0, AUTO_CHUNKING, {"i": i}, "batch_1"
            )
    ids: list[int] = []
    vectors = np.random.default_rng(0).random((CHUNKS_PER_FILE, DIM), dtype=np.float32)
    for i in range(FILES):
        owner = Owner("vs_1", f"file_{i}", 1, "batch_1", "t", "s")
        texts = [f"chunk {j} of file {i}" for j in range(CHUNKS_PER_FILE)]
        ids += storage.chunks.insert_slice(
            owner, texts, [5] * CHUNKS_PER_FILE, vectors, 0, CHUNKS_PER_FILE
        ).tolist()
        with storage.transaction() as tx:
            storage.store_files.set_status(tx, "vs_1", f"file_{i}", FileStatus.COMPLETED, None, 1)
    return ids


def _time(call: Callable[[], object], rounds: int) -> tuple[float, float]:
    took = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return statistics.median(took), took[int(len(took) * 0.99) - 1]


def measure(storage: Storage, rounds: int) -> dict[str, tuple[float, float]]:
    ids = _fill(storage)
    sample = ids[:10]

    def status_commit() -> None:  # a file's status change with its batch record
        with storage.transaction() as tx:
            storage.store_files.set_status(tx, "vs_1", "file_0", FileStatus.COMPLETED, None, 1)
            storage.batches.file_status(tx, "batch_1", "file_0")

    calls: dict[str, Callable[[], object]] = {
        "stores.get": lambda: storage.stores.get("vs_1", "t", "s"),
        "store_files.status_counts": lambda: storage.store_files.status_counts("vs_1"),
        "batches.get + status_counts": lambda: (
            storage.batches.get("batch_1"),
            storage.batches.status_counts("batch_1"),
        ),
        "stores.touch": lambda: storage.stores.touch("vs_1", int(time.time())),
        "jobs.current": lambda: storage.jobs.current("vs_1", "file_1"),
        "chunks.hits (10 ids)": lambda: storage.chunks.hits("vs_1", sample),
        "transaction: set_status + file_status": status_commit,
    }
    return {name: _time(call, rounds) for name, call in calls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quiver-calls-") as tmp:
        root = Path(tmp)
        sqlite = open_storage("", root / "sqlite")
        try:
            on_sqlite = measure(sqlite, args.rounds)
        finally:
            sqlite.close()
        server = PostgresServer.start(root / "pg")
        try:
            pg = open_storage(server.url, root)
            try:
                on_pg = measure(pg, args.rounds)
            finally:
                pg.close()
        finally:
            server.stop()
    print(f"{'call':42} {'SQLite p50/p99 ms':>20} {'PostgreSQL p50/p99 ms':>24}")
    for name, (p50, p99) in on_sqlite.items():
        q50, q99 = on_pg[name]
        print(f"{name:42} {p50:9.3f} / {p99:7.3f} {q50:11.3f} / {q99:8.3f}")


if __name__ == "__main__":
    main()
