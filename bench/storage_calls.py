"""What the repository calls the event loop makes cost on each storage: SQLite (the file
in a temporary directory) against PostgreSQL (a local server from tests/support/postgres.py,
over TCP on 127.0.0.1). Median and p99 of each call, in milliseconds.

Then the event loop's view: ``CALLERS`` concurrent callers each make a request's reads
(``stores.get`` + ``status_counts``) ``--rounds`` times, either on the event loop itself (as
the core did before core/db_calls.py) or through ``DbCalls.run`` (its threads, as the core
does now), while a ticker measures how late a 5 ms sleep on the loop wakes (the loop lag
every other caller, and health checks, wait) and each call's latency as its caller sees it.

    .venv/bin/python -m bench.storage_calls --rounds 300
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from quiver.server.core.db_calls import DbCalls
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


CALLERS = 8
TICK = 0.005


def _request_reads(storage: Storage) -> object:
    return storage.stores.get("vs_1", "t", "s"), storage.store_files.status_counts("vs_1")


async def _loop_view(storage: Storage, rounds: int, threads: bool, pool: int) -> dict[str, float]:
    calls = DbCalls(threads=pool, queue=CALLERS)
    lags: list[float] = []
    took: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append((time.perf_counter() - started - TICK) * 1000)

    async def caller() -> None:
        for _ in range(rounds // CALLERS):
            started = time.perf_counter()
            if threads:
                await calls.run(_request_reads, storage)
            else:
                _request_reads(storage)
                await asyncio.sleep(0)  # a request's other awaits
            took.append((time.perf_counter() - started) * 1000)

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    seconds = time.perf_counter() - started
    done.set()
    await tick
    calls.close()
    lags.sort()
    took.sort()
    return {
        "call_p50": statistics.median(took),
        "call_p99": took[int(len(took) * 0.99) - 1],
        "lag_p50": statistics.median(lags),
        "lag_p99": lags[int(len(lags) * 0.99) - 1],
        "lag_max": lags[-1],
        "calls_per_s": len(took) / seconds,
    }


def loop_view(storage: Storage, rounds: int, pool: int) -> dict[str, dict[str, float]]:
    return {
        "on the event loop (before)": asyncio.run(_loop_view(storage, rounds, False, pool)),
        f"DbCalls, {pool} threads (now)": asyncio.run(_loop_view(storage, rounds, True, pool)),
    }


def _print_loop_view(name: str, view: dict[str, dict[str, float]]) -> None:
    print(f"\n{name}: {CALLERS} concurrent callers, stores.get + status_counts per call")
    print(
        f"{'where the calls run':28} {'call p50/p99 ms':>17} {'loop lag p50/p99/max ms':>26}"
        f" {'calls/s':>9}"
    )
    for mode, v in view.items():
        print(
            f"{mode:28} {v['call_p50']:7.2f} / {v['call_p99']:6.2f}"
            f" {v['lag_p50']:8.2f} / {v['lag_p99']:6.2f} / {v['lag_max']:6.2f}"
            f" {v['calls_per_s']:9.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8, help="DbCalls threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quiver-calls-") as tmp:
        root = Path(tmp)
        sqlite = open_storage("", root / "sqlite")
        try:
            on_sqlite = measure(sqlite, args.rounds)
            sqlite_loop = loop_view(sqlite, args.rounds, args.threads)
        finally:
            sqlite.close()
        server = PostgresServer.start(root / "pg")
        try:
            pg = open_storage(server.url, root)
            try:
                on_pg = measure(pg, args.rounds)
                pg_loop = loop_view(pg, args.rounds, args.threads)
            finally:
                pg.close()
        finally:
            server.stop()
    print(f"{'call':42} {'SQLite p50/p99 ms':>20} {'PostgreSQL p50/p99 ms':>24}")
    for name, (p50, p99) in on_sqlite.items():
        q50, q99 = on_pg[name]
        print(f"{name:42} {p50:9.3f} / {p99:7.3f} {q50:11.3f} / {q99:8.3f}")
    _print_loop_view("SQLite", sqlite_loop)
    _print_loop_view("PostgreSQL", pg_loop)


if __name__ == "__main__":
    main()
