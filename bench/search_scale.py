"""Search latency against store size: p50/p99 of SearchVectorStore over gRPC (ranker ``none``
and ``auto``) from a real ``quiver serve`` process, next to ``VectorIndex.knn`` in-process
on the same saved index, for stores of 10k … 1M chunks.

    .venv/bin/python -m bench.search_scale --sizes 10000,100000,1000000

How each store is built. Ingesting 1M chunks through gRPC takes too long on a small
machine (the hnswlib build alone is most of it), so each store's data directory is written
directly with the server's own storage code, in the layout the server itself writes:

- ``quiver.sqlite3`` is created by ``quiver.server.storage.database.Database`` (which creates
  the schema); rows go in as ``core/processing.py`` commits a completed file: one
  ``vector_stores`` row (tenant ``default``, the open-mode server's tenant; subject "";
  embedding model ``hash``, 512 dimensions), one ``files`` row per source file with its
  bytes in ``blobs/<sha[:2]>/<sha>`` (search never reads blobs, but with them the data
  directory is a complete one), one ``vector_store_files`` row per file with status
  ``completed`` and its ``usage_bytes`` (vector bytes + text bytes), and one ``chunks`` row
  per chunk (text, token count, float32 vector bytes).
- The keyword index: ``keyword/<store_id>/`` (tantivy), written as the server writes it, by
  ``index/keyword_manager.py``'s ``KeywordIndexes``: each batch of chunks told with ``add``
  (as a completed file's are), committed whenever its bounded queue is full, and at the end.
- The chunks: every corpus file (``tests/support/corpus.py``: kernel docs, Vim's manual, Python's
  stdlib) is tokenised once with cl100k_base; N windows of 100 tokens are taken at evenly
  spaced token positions (stride ≈ corpus tokens / N: ~16 tokens at 1M on the full corpus,
  so neighbouring chunks overlap there), never across a file's end; a window whose text
  another window already has is replaced by one at a shifted position, so the N chunk texts
  are distinct. They are embedded with ``HashEmbedder(512)`` (the server's ``hash`` model).
- The index: a ``VectorIndex`` with the server's defaults (``Settings()``: M=16,
  ef_construction=200, ef_search=256) whose labels are the chunk ids, saved to
  ``indexes/<store_id>.hnsw``.

Then ``quiver serve`` starts on that directory. At start-up it reconciles every index
against SQLite and saves the ones it had to change, so the index file must come out of the
run untouched (same size and mtime) and the server's ``quiver_index_vectors`` gauge must
equal N: otherwise the run stops, since the store was not what the server expects. One
client sends ``--queries`` short queries (runs of 3…8 words from the corpus, as in
``bench/search.py``; the same for every size) one after another, top 10, for each ranker.
After the server stops, the saved index is opened in-process and the same queries (already
embedded) go to ``VectorIndex.knn`` (k=10, ef_search as the server's), and embedding plus
knn. Figures go to ``bench/results/search_scale.json`` (rewritten after each size), which
``bench/charts.py`` draws. Timings depend on the machine; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from grpc import aio
from quiver.server.auth.authenticate import OPEN_TENANT
from quiver.server.config import Settings
from quiver.server.core import ids
from quiver.server.embedders.hashing import HashEmbedder
from quiver.server.index.hnsw import VectorIndex
from quiver.server.index.keyword_manager import KeywordIndexes
from quiver.server.ingest.chunking import encode, get_encoding
from quiver.server.storage.blobs import BlobStore
from quiver.server.storage.database import Database
from quiver.v1 import vector_stores_pb2, vector_stores_pb2_grpc

from bench.results import RESULTS_DIR, save_results
from bench.search import sample_queries, searcher
from tests.support.corpus import corpus_files
from tests.support.serve import ServerProcess, free_port, serve_command, wait_serving_process

K = 10
WINDOW_TOKENS = 100
MIN_STRIDE = 10  # below this, neighbouring chunks share more than 90% of their tokens
BATCH = 20_000  # chunks embedded, inserted and indexed at a time
WARM_UP = 20
SHIFT_PASSES = (0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875)
SERIES = ("grpc_none", "grpc_auto", "knn", "embed_knn")
LABELS = {
    "grpc_none": "gRPC ranker=none",
    "grpc_auto": "gRPC ranker=auto",
    "knn": "in-process knn",
    "embed_knn": "in-process embed+knn",
}


# -- the corpus and its windows --------------------------------------------------------------


@dataclass
class Source:
    path: Path
    tokens: npt.NDArray[np.int32]


@dataclass(frozen=True)
class Window:
    source: int  # index into the sources
    start: int  # first token
    text: str
    token_count: int


def tokenize_corpus() -> list[Source]:
    """Every corpus file with its cl100k_base tokens (as the server's chunker encodes it)."""
    sources: list[Source] = []
    for path in corpus_files(10**12):
        tokens = np.asarray(encode(path.read_text(encoding="utf-8")), dtype=np.int32)
        if tokens.size:
            sources.append(Source(path, tokens))
    return sources


def window_positions(sources: Sequence[Source]) -> npt.NDArray[np.int64]:
    """Cumulative count of the positions where a window may start (none crosses a file's
    end; a file shorter than a window has one, the whole file)."""
    valid = np.fromiter(
        (max(s.tokens.size - WINDOW_TOKENS, 0) + 1 for s in sources),
        dtype=np.int64,
        count=len(sources),
    )
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(valid)])


def pick_windows(sources: Sequence[Source], n: int) -> tuple[list[Window], float, int]:
    """``n`` windows with distinct texts at evenly spaced positions, in corpus order.

    Returns the windows, the stride (tokens between window starts) and how many windows
    were shifted because their text was already taken."""
    cumulative = window_positions(sources)
    positions = int(cumulative[-1])
    if n > positions:
        raise SystemExit(f"the corpus has {positions:,} window positions, fewer than {n:,} chunks")
    stride = positions / n
    if stride < MIN_STRIDE:
        print(
            f"note: stride {stride:.1f} tokens: neighbouring chunks share most of their text",
            file=sys.stderr,
        )
    encoding = get_encoding()
    taken: set[str] = set()
    chosen: list[Window] = []
    shifted = 0
    for shift in (0.0, *SHIFT_PASSES):
        wanted = n - len(chosen)
        if wanted == 0:
            break
        starts = np.floor((np.arange(n) + shift) * stride).astype(np.int64)
        files = np.searchsorted(cumulative, starts, side="right") - 1
        for position, f in zip(starts.tolist(), files.tolist(), strict=True):
            if len(chosen) == n:
                break
            offset = position - int(cumulative[f])
            piece = sources[f].tokens[offset : offset + WINDOW_TOKENS]
            text = encoding.decode(piece.tolist(), errors="replace")
            if text in taken:
                continue
            taken.add(text)
            chosen.append(Window(f, offset, text, int(piece.size)))
            shifted += shift > 0
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen):,} distinct windows found, not {n:,}")
    chosen.sort(key=lambda w: (w.source, w.start))
    return chosen, stride, shifted


# -- building a store's data directory -------------------------------------------------------


@dataclass
class Built:
    store_id: str
    chunks: int
    files: int
    tokens: int
    stride: float
    shifted: int
    seconds: dict[str, float]
    index_path: Path
    index_bytes: int
    sqlite_bytes: int


def build_store(data_dir: Path, sources: Sequence[Source], n: int, settings: Settings) -> Built:
    seconds = dict.fromkeys(
        ("windows", "files", "embed", "sqlite", "index", "keyword", "save"), 0.0
    )
    started = time.perf_counter()
    windows, stride, shifted = pick_windows(sources, n)
    seconds["windows"] = time.perf_counter() - started

    t = time.perf_counter()
    dim = settings.embedding_dimensions
    db = Database(data_dir / "quiver.sqlite3")
    blobs = BlobStore(data_dir / "blobs")
    now = int(time.time())
    store_id = ids.new_id(ids.VECTOR_STORE)
    used = sorted({w.source for w in windows})
    file_ids = {i: ids.new_id(ids.FILE) for i in used}
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO vector_stores (id, tenant, subject, name, created_at, last_active_at, "
            "metadata, embedding_model, embedding_dimensions) "
            "VALUES (?, ?, '', ?, ?, ?, '{}', 'hash', ?)",
            (store_id, OPEN_TENANT, f"search-scale-{n}", now, now, dim),
        )
        for i in used:
            data = sources[i].path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            blob = blobs.path_for(digest)
            if not blob.exists():
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(data)
            conn.execute(
                "INSERT INTO files (id, tenant, subject, filename, purpose, bytes, sha256, "
                "created_at) VALUES (?, ?, '', ?, 'assistants', ?, ?, ?)",
                (file_ids[i], OPEN_TENANT, sources[i].path.name, len(data), digest, now),
            )
    seconds["files"] = time.perf_counter() - t

    embedder = HashEmbedder(dim)
    index_path = data_dir / "indexes" / f"{store_id}.hnsw"
    index = VectorIndex(
        index_path,
        dim,
        m=settings.hnsw_m,
        ef_construction=settings.hnsw_ef_construction,
        ef_search=settings.hnsw_ef_search,
        add_threads=os.cpu_count() or 2,
    )
    keywords = KeywordIndexes(
        data_dir / "keyword",
        commit_seconds=settings.keyword_commit_seconds,
        max_pending=settings.keyword_pending_chunks,
    )
    usage = dict.fromkeys(used, 0)
    chunk_index = dict.fromkeys(used, 0)
    for first in range(0, n, BATCH):
        part = windows[first : first + BATCH]
        t = time.perf_counter()
        vectors = embedder.embed([w.text for w in part])
        seconds["embed"] += time.perf_counter() - t

        t = time.perf_counter()
        labels = np.arange(first + 1, first + 1 + len(part), dtype=np.int64)
        rows: list[tuple[object, ...]] = []
        for label, window, vector in zip(labels.tolist(), part, vectors, strict=True):
            rows.append(
                (
                    label,
                    store_id,
                    file_ids[window.source],
                    OPEN_TENANT,
                    chunk_index[window.source],
                    window.token_count,
                    window.text,
                    vector.tobytes(),
                )
            )
            chunk_index[window.source] += 1
            usage[window.source] += vector.nbytes + len(window.text.encode("utf-8"))
        with db.transaction() as conn:
            conn.executemany(
                "INSERT INTO chunks (id, vector_store_id, file_id, tenant, subject, chunk_index, "
                "token_count, text, vector) VALUES (?, ?, ?, ?, '', ?, ?, ?, ?)",
                rows,
            )
        seconds["sqlite"] += time.perf_counter() - t

        t = time.perf_counter()
        index.add(labels, vectors)
        seconds["index"] += time.perf_counter() - t

        t = time.perf_counter()
        told = [
            (label, file_ids[w.source], w.text)
            for label, w in zip(labels.tolist(), part, strict=True)
        ]
        if keywords.add(store_id, told):
            keywords.flush(store_id)
        seconds["keyword"] += time.perf_counter() - t
        print(f"  {first + len(part):>9,} / {n:,} chunks", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    t = time.perf_counter()
    with db.transaction() as conn:
        conn.executemany(
            "INSERT INTO vector_store_files (vector_store_id, file_id, tenant, subject, "
            "created_at, status, chunk_max_tokens, chunk_overlap_tokens, chunk_auto, "
            "usage_bytes, generation) VALUES (?, ?, ?, '', ?, 'completed', ?, 0, 0, ?, 1)",
            [(store_id, file_ids[i], OPEN_TENANT, now, WINDOW_TOKENS, usage[i]) for i in used],
        )
    db.close()  # checkpoints the WAL into the database file
    seconds["sqlite"] += time.perf_counter() - t

    t = time.perf_counter()
    keywords.close()  # commits what is queued
    seconds["keyword"] += time.perf_counter() - t

    t = time.perf_counter()
    assert index.live_count == n, (index.live_count, n)
    index.save()
    seconds["save"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    return Built(
        store_id=store_id,
        chunks=n,
        files=len(used),
        tokens=sum(w.token_count for w in windows),
        stride=stride,
        shifted=shifted,
        seconds=seconds,
        index_path=index_path,
        index_bytes=index_path.stat().st_size,
        sqlite_bytes=(data_dir / "quiver.sqlite3").stat().st_size,
    )


# -- the server --------------------------------------------------------------------------------


def start_server(data_dir: Path, log_path: Path, timeout: float) -> tuple[ServerProcess, float]:
    """``quiver serve`` on ``data_dir`` (``ServerProcess.start`` makes its own), logging
    warnings and errors to ``log_path``; returns it once SERVING, and the seconds that took
    (start-up opens and reconciles every index)."""
    port, metrics_port = free_port(), free_port()
    command = serve_command(f"127.0.0.1:{port}", data_dir, "--ingest-workers", "1")
    command += ["--log-level", "warning", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(process, port, data_dir, metrics_port)
    try:
        wait_serving_process(process, server.target, timeout, log_path.read_text)
    except TimeoutError:
        server.stop()
        raise
    return server, time.perf_counter() - started


def scrape_gauge(server: ServerProcess, name: str) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(f"{name} is not in {url}")


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    hits: int = 0  # results returned, over all the timed queries

    def summary(self) -> dict[str, float]:
        ms = np.asarray(self.seconds) * 1000.0
        return {
            "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean()),
        }


async def measure_grpc(target: str, store_id: str, queries: Sequence[str]) -> dict[str, Latencies]:
    """One client, the queries one after another, per ranker (after ``WARM_UP`` queries)."""
    channel = aio.insecure_channel(target)
    try:
        stub = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
        out: dict[str, Latencies] = {}
        for ranker in ("none", "auto"):
            search = searcher(stub, store_id, ranker)
            for query in queries[:WARM_UP]:
                await search(query)
            run = Latencies()
            for query in queries:
                t = time.perf_counter()
                reply: vector_stores_pb2.SearchVectorStoreResponse = await search(query)
                run.seconds.append(time.perf_counter() - t)
                run.hits += len(reply.data)
            out[f"grpc_{ranker}"] = run
        return out
    finally:
        await channel.close(None)


def measure_inprocess(
    index: VectorIndex, embedder: HashEmbedder, queries: Sequence[str]
) -> dict[str, Latencies]:
    vectors = embedder.embed(queries)

    def knn(i: int) -> int:
        labels, _ = index.knn(vectors[i], K)
        return int((labels >= 0).sum())

    def embed_knn(i: int) -> int:
        labels, _ = index.knn(embedder.embed([queries[i]])[0], K)
        return int((labels >= 0).sum())

    out: dict[str, Latencies] = {}
    work: dict[str, Callable[[int], int]] = {"knn": knn, "embed_knn": embed_knn}
    for name, one in work.items():
        for i in range(min(WARM_UP, len(queries))):
            one(i)
        run = Latencies()
        for i in range(len(queries)):
            t = time.perf_counter()
            run.hits += one(i)
            run.seconds.append(time.perf_counter() - t)
        out[name] = run
    return out


# -- one size ----------------------------------------------------------------------------------


def run_size(
    n: int,
    sources: Sequence[Source],
    queries: Sequence[str],
    settings: Settings,
    root: Path,
    keep: bool,
    start_timeout: float,
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"quiver-scale-{n}-", dir=root))
    try:
        print(f"\n{n:,} chunks: building {data_dir}", flush=True)
        built = build_store(data_dir, sources, n, settings)
        gc.collect()  # the build's index and texts, before the server loads its own copy
        s = built.seconds
        print(
            f"  built in {s['total']:.1f} s (windows {s['windows']:.1f}, files {s['files']:.1f}, "
            f"embed {s['embed']:.1f}, SQLite {s['sqlite']:.1f}, hnswlib add {s['index']:.1f}, "
            f"tantivy {s['keyword']:.1f}, "
            f"save {s['save']:.1f}); {built.files:,} files, stride {built.stride:.1f} tokens, "
            f"{built.shifted:,} windows shifted for distinct texts; index "
            f"{built.index_bytes / 1e6:,.0f} MB, SQLite {built.sqlite_bytes / 1e6:,.0f} MB",
            flush=True,
        )

        before = built.index_path.stat()
        log_path = data_dir / "server.log"
        server, start_seconds = start_server(data_dir, log_path, start_timeout)
        try:
            load_before = os.getloadavg()[0]
            live = scrape_gauge(server, "quiver_index_vectors")
            if live != n:
                raise RuntimeError(f"the server's index holds {live:,.0f} vectors, not {n:,}")
            grpc_runs = asyncio.run(measure_grpc(server.target, built.store_id, queries))
            peak_rss_mb = server.peak_rss_mb()
        finally:
            code = server.stop()
        after = built.index_path.stat()
        untouched = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
        log = log_path.read_text()
        if code != 0 or not untouched:
            raise RuntimeError(
                f"server exit code {code}; index file untouched: {untouched} (the server "
                f"reconciled the index: the built store is not what it expects)\n{log}"
            )
        print(
            f"  server: SERVING after {start_seconds:.1f} s, index already matched SQLite "
            f"(nothing reconciled), peak RSS {peak_rss_mb:,.0f} MB; load average "
            f"{load_before:.2f} as the searches started",
            flush=True,
        )

        t = time.perf_counter()
        index = VectorIndex.open(
            built.index_path, settings.embedding_dimensions, ef_search=settings.hnsw_ef_search
        )
        open_seconds = time.perf_counter() - t
        local_runs = measure_inprocess(index, HashEmbedder(settings.embedding_dimensions), queries)
        load_after = os.getloadavg()[0]
        del index
        gc.collect()
    finally:
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)

    runs = {**grpc_runs, **local_runs}
    return {
        "chunks": n,
        "files": built.files,
        "tokens": built.tokens,
        "stride_tokens": round(built.stride, 2),
        "windows_shifted": built.shifted,
        "build_seconds": {k: round(v, 2) for k, v in built.seconds.items()},
        "index_bytes": built.index_bytes,
        "sqlite_bytes": built.sqlite_bytes,
        "server_start_seconds": round(start_seconds, 2),
        "server_peak_rss_mb": round(peak_rss_mb, 1),
        "index_open_seconds": round(open_seconds, 2),
        "reconciled": False,
        # Other processes on the machine skew the figures: the 1-minute load average when
        # the searches started and when they ended.
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "latency_ms": {name: runs[name].summary() for name in SERIES},
        "mean_results": {name: runs[name].hits / len(queries) for name in SERIES},
        "data_dir": str(data_dir) if keep else None,
    }


# -- output ------------------------------------------------------------------------------------


def print_tables(sizes: Sequence[dict[str, Any]]) -> None:
    print("\nbuild (seconds; written directly with the server's storage code, not ingested)")
    print(
        f"{'chunks':>9} {'files':>6} {'stride':>6} {'windows':>8} {'embed':>7} {'SQLite':>7} "
        f"{'hnswlib':>8} {'save':>6} {'total':>8} {'index MB':>9} {'SQLite MB':>10} "
        f"{'start s':>8} {'RSS MB':>7}"
    )
    for size in sizes:
        b = size["build_seconds"]
        print(
            f"{size['chunks']:>9,} {size['files']:>6,} {size['stride_tokens']:>6.1f} "
            f"{b['windows'] + b['files']:>8.1f} {b['embed']:>7.1f} {b['sqlite']:>7.1f} "
            f"{b['index']:>8.1f} {b['save']:>6.1f} {b['total']:>8.1f} "
            f"{size['index_bytes'] / 1e6:>9,.0f} {size['sqlite_bytes'] / 1e6:>10,.0f} "
            f"{size['server_start_seconds']:>8.1f} {size['server_peak_rss_mb']:>7,.0f}"
        )
    print(
        "\nsearch latency, ms, top 10, one client (p50 / p99); load = the machine's 1-minute "
        "load average as the searches started"
    )
    print(
        f"{'chunks':>9} "
        + " ".join(f"{LABELS[name]:>21}" for name in SERIES)
        + f" {'none/knn p50':>13} {'auto/none p50':>14} {'load':>5}"
    )
    for size in sizes:
        latency = size["latency_ms"]
        cells = [f"{latency[n]['p50']:>9.3f} / {latency[n]['p99']:>7.3f}" for n in SERIES]
        print(
            f"{size['chunks']:>9,} "
            + " ".join(f"{c:>21}" for c in cells)
            + f" {latency['grpc_none']['p50'] / latency['knn']['p50']:>12.1f}x"
            + f" {latency['grpc_auto']['p50'] / latency['grpc_none']['p50']:>13.1f}x"
            + f" {size['load_average'][0]:>5.2f}"
        )


def parse_sizes(text: str) -> list[int]:
    sizes = [int(part.strip().replace("_", "")) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers, e.g. 10000,100000")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=parse_sizes, default=[10_000, 100_000, 1_000_000], help="chunks per store"
    )
    parser.add_argument("--queries", type=int, default=300, help="timed queries per measurement")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--root", type=Path, default=None, help="where the data dirs go")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    parser.add_argument(
        "--start-timeout", type=float, default=900.0, help="seconds the server may take to start"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "search_scale.json")
    args = parser.parse_args()
    settings = Settings()

    t = time.perf_counter()
    sources = tokenize_corpus()
    tokenize_seconds = time.perf_counter() - t
    total_tokens = sum(s.tokens.size for s in sources)
    queries = sample_queries([s.path for s in sources], args.queries, args.seed)
    print(
        f"corpus: {len(sources):,} files, {total_tokens:,} tokens, tokenised in "
        f"{tokenize_seconds:.1f} s; {len(queries)} queries of 3…8 words, e.g. {queries[0]!r}\n"
        f"index: hnswlib M={settings.hnsw_m} ef_construction={settings.hnsw_ef_construction} "
        f"ef_search={settings.hnsw_ef_search}; hash embedder, "
        f"{settings.embedding_dimensions} dimensions; {os.cpu_count()} CPUs",
        flush=True,
    )
    results: dict[str, Any] = {
        "benchmark": "search_scale",
        "settings": {
            "k": K,
            "queries": len(queries),
            "warm_up": WARM_UP,
            "window_tokens": WINDOW_TOKENS,
            "dimensions": settings.embedding_dimensions,
            "hnsw_m": settings.hnsw_m,
            "hnsw_ef_construction": settings.hnsw_ef_construction,
            "hnsw_ef_search": settings.hnsw_ef_search,
        },
        "corpus": {
            "files": len(sources),
            "tokens": total_tokens,
            "tokenize_seconds": round(tokenize_seconds, 2),
        },
        "series": LABELS,
        "sizes": [],
    }
    root = args.root or Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        size = run_size(n, sources, queries, settings, root, args.keep, args.start_timeout)
        results["sizes"].append(size)
        save_results(args.out, results)
        print(f"  latency ms: {json.dumps(size['latency_ms'])}", flush=True)
    print_tables(results["sizes"])
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
