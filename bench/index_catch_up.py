"""What read-your-writes costs a replica (core/index_sync.py), on a real SQLite database and
hnswlib index, in-process:

    .venv/bin/python -m bench.index_catch_up --chunks 10000

- ``rebuild``: a store this replica never held (no index file), caught up in full: what the
  first search pays on a replica taking over a store whose owner died (every chunk read
  from the database and inserted into a new index, with the server's hnswlib settings);
- ``idle``: a catch-up with nothing new, the overhead every search pays once a replica has
  seen others (median of ``--repeat``);
- ``new_100``: a catch-up after another replica committed 100 chunks (median).

Chunks are random unit vectors of ``--dim`` floats, written as another replica leaves them
(tests/support/elsewhere.py). Figures go to ``bench/results/index_catch_up.json``. Timings
depend on the machine and its load: ``rebuild_cpu_s`` (this process's CPU time) and the
load average are recorded beside them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from quiver.server.config import Settings
from quiver.server.core.index_sync import IndexSync
from quiver.server.index.manager import IndexManager
from quiver.server.storage.database import Database
from quiver.server.storage.index_sync_rows import IndexSyncRows

from bench.results import RESULTS_DIR, save_results
from tests.support.elsewhere import add_store, commit_file, unit_vectors

STORE = "vs_bench"
FILE_CHUNKS = 100


def run(chunks: int, dim: int, repeat: int, root: Path) -> dict[str, float | int]:
    db = Database(root / "quiver.sqlite3")
    add_store(db, STORE, dim)
    for n, start in enumerate(range(0, chunks, FILE_CHUNKS)):
        rows = min(FILE_CHUNKS, chunks - start)
        commit_file(db, STORE, f"file-{n}", unit_vectors(rows, dim, n))
    defaults = Settings()
    indexes = IndexManager(
        root / "indexes",
        m=defaults.hnsw_m,
        ef_construction=defaults.hnsw_ef_construction,
        ef_search=defaults.hnsw_ef_search,
    )
    sync = IndexSync(IndexSyncRows(db), indexes, lambda: 1)
    started, cpu = time.perf_counter(), time.process_time()
    report = sync.catch_up(STORE, dim)
    rebuild, rebuild_cpu = time.perf_counter() - started, time.process_time() - cpu
    assert report.full and report.added == chunks
    idle = []
    for _ in range(repeat):
        started = time.perf_counter()
        assert sync.catch_up(STORE, dim).added == 0
        idle.append(time.perf_counter() - started)
    fresh = []
    for i in range(repeat):
        commit_file(db, STORE, f"fresh-{i}", unit_vectors(100, dim, 10_000 + i))
        started = time.perf_counter()
        assert sync.catch_up(STORE, dim).added == 100
        fresh.append(time.perf_counter() - started)
    db.close()
    return {
        "chunks": chunks,
        "dim": dim,
        "rebuild_s": round(rebuild, 3),
        "rebuild_cpu_s": round(rebuild_cpu, 3),
        "idle_ms": round(statistics.median(idle) * 1000, 3),
        "new_100_ms": round(statistics.median(fresh) * 1000, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args.chunks, args.dim, args.repeat, Path(tmp))
    print(figures)
    save_results(RESULTS_DIR / "index_catch_up.json", figures)


if __name__ == "__main__":
    main()
