"""How long a file's completing transaction lasts on PostgreSQL now that its chunk rows are
written in it (core/processing.py ``_complete``, storage/postgres/chunk_rows.py
``insert_reserved``): one file of ``--chunks`` chunks (``--dim`` float32 vectors,
``--text-bytes`` of text each, words from a vocabulary of 2,000), against a local server
from tests/support/postgres.py over TCP on 127.0.0.1 (or ``--database``).

The transaction is the one the completion runs: the chunk rows inserted under ids reserved
beforehand, a few MB per statement, then the lease read FOR UPDATE, the status flip, the
batch's sequence, the store's commit sequence, COMMIT. Reported: the whole transaction,
the inserts, the longest single statement (PostgreSQL's statement_timeout is 15 s) and the
longest pause between two statements (idle_in_transaction_session_timeout is 15 s), over
``--repeat`` files.

    .venv/bin/python -m bench.pg_commit --chunks 20000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from quiver.server.core.models import AUTO_CHUNKING, FileStatus, StoredFile
from quiver.server.storage.postgres import chunk_rows as chunk_rows_module
from quiver.server.storage.postgres.chunk_rows import PgChunkRows
from quiver.server.storage.postgres.connection import execute
from quiver.server.storage.postgres.storage import PostgresStorage
from quiver.server.storage.rows import Owner, StoreRow

from tests.support.postgres import PostgresServer


class Timed:
    """Wraps ``execute`` of the chunk rows module: each statement's duration and the pauses
    between them."""

    def __init__(self) -> None:
        self.statements: list[float] = []
        self.gaps: list[float] = []
        self._last_end: float | None = None

    def __call__(self, conn: Any, sql: str, params: Any = ()) -> Any:
        start = time.perf_counter()
        if self._last_end is not None:
            self.gaps.append(start - self._last_end)
        try:
            return execute(conn, sql, params)
        finally:
            self._last_end = time.perf_counter()
            self.statements.append(self._last_end - start)


def one_file(
    storage: PostgresStorage, n: int, chunks: int, dim: int, text_bytes: int
) -> dict[str, float]:
    store, file_id, batch = "vs_bench", f"file_{n}", f"batch_{n}"
    with storage.transaction() as tx:
        storage.files.insert(
            tx, "t", "s", StoredFile(file_id, 1, 0, "f.txt", "assistants", "0" * 64)
        )
        storage.batches.insert(tx, batch, store, "t", "s", 0, None, None)
        storage.batches.add_files(tx, batch, [file_id])
        generation = storage.store_files.attach(
            tx, store, file_id, "t", "s", 0, AUTO_CHUNKING, {}, batch
        )
    rng = np.random.default_rng(n)
    vectors = rng.random((chunks, dim), dtype=np.float32)
    words = [
        "".join(chr(97 + int(c)) for c in rng.integers(0, 26, int(k)))
        for k in rng.integers(2, 10, 2_000)
    ]
    picks = rng.integers(0, len(words), (chunks, text_bytes // 6 + 1))
    texts = [" ".join(words[int(i)] for i in row)[:text_bytes] for row in picks]
    owner = Owner(store, file_id, generation, batch, "t", "s")
    rows = storage.chunks
    assert isinstance(rows, PgChunkRows)
    ids = rows.reserve_ids(chunks)
    timed = Timed()
    namespace = vars(chunk_rows_module)  # its statements timed
    original = namespace["execute"]
    namespace["execute"] = timed
    try:
        began = time.perf_counter()
        with storage.transaction() as tx:
            rows.insert_reserved(tx, owner, ids, texts, [100] * chunks, vectors)
            inserted = time.perf_counter()
            lease = storage.jobs.lease(tx, store, file_id)
            assert lease is not None and lease.generation == generation
            storage.store_files.set_status(tx, store, file_id, FileStatus.COMPLETED, None, 1)
            sequence = storage.batches.next_sequence(tx, batch)
            assert sequence is not None
            storage.batches.set_file(tx, batch, file_id, FileStatus.COMPLETED, None, sequence)
            storage.store_files.mark_committed(tx, store, file_id)
            before_commit = time.perf_counter()
        ended = time.perf_counter()
    finally:
        namespace["execute"] = original
    return {
        "transaction_s": ended - began,
        "inserts_s": inserted - began,
        "commit_s": ended - before_commit,
        "longest_statement_s": max(timed.statements),
        "longest_pause_s": max(timed.gaps, default=0.0),
        "statements": len(timed.statements),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--text-bytes", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--vector-storage", default="", choices=["", "external", "extended", "main", "plain"]
    )
    parser.add_argument("--database", default="", help="postgresql://... (default: a local one)")
    args = parser.parse_args()
    server = None
    root = Path(tempfile.mkdtemp(prefix="quiver-pg-bench-"))
    url = args.database
    if not url:
        server = PostgresServer.start(root / "cluster")
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_commit")
        url = server.url.rsplit("/", 1)[0] + "/bench_commit"
    try:
        storage = PostgresStorage(url)
        try:
            if args.vector_storage:
                with storage.transaction() as tx:
                    execute(
                        tx,
                        f"ALTER TABLE chunks ALTER COLUMN vector SET STORAGE {args.vector_storage}",
                    )
            with storage.transaction() as tx:
                storage.stores.insert(
                    tx,
                    StoreRow("vs_bench", "t", "s", "", 0, 0, None, None, {}, "h", args.dim, True),
                )
            runs = [
                one_file(storage, n, args.chunks, args.dim, args.text_bytes)
                for n in range(args.repeat)
            ]
        finally:
            storage.close()
    finally:
        if server is not None:
            server.stop()
    mb = args.chunks * (4 * args.dim + args.text_bytes) / 1e6
    result = {
        "chunks": args.chunks,
        "dim": args.dim,
        "text_bytes": args.text_bytes,
        "row_mb": round(mb, 1),
        "load_average": os.getloadavg(),
        "runs": runs,
        "median_transaction_s": statistics.median(r["transaction_s"] for r in runs),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
