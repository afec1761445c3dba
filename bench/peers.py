"""Quiver's search engine next to its peers, on the same chunks and the same vectors.

    .venv/bin/python -m bench.peers                 # 20k chunks (a few minutes)
    .venv/bin/python -m bench.peers --chunks 100000

The dataset (built once per run, deterministic):

- Chunks of real text: the corpus of ``tests/support/corpus.py`` (kernel docs, Vim's manual,
  Python's stdlib), each file cut into consecutive windows of ``CHUNK_WORDS`` words (a
  shorter tail window of at least ``MIN_TAIL_WORDS`` words is kept), until ``--chunks``.
- Vectors: Quiver's ``hash`` embedder (``HashEmbedder(512)``), unit length, cosine.
- Attributes: ``tenth`` (0…9) and ``hundredth`` (0…99) from a seeded permutation of the
  chunk ids, so ``tenth == 3`` keeps exactly 10 % of the chunks and ``hundredth == 7``
  exactly 1 %, spread over the whole corpus.
- Queries: ``--queries`` runs of 3…8 words from the corpus (``bench.search.sample_queries``),
  embedded with the same embedder.

Engines, each loaded with the same ids, vectors, attributes and texts, asked the same
queries one after another (one client), top ``K``:

- ``quiver`` (in-process): ``index/hnsw.py``'s ``VectorIndex`` (M=16, ef_construction
  200, ef_search 256: the server's defaults) and the core's filter path as
  ``core/search.py`` drives it: the filter is parsed by ``core/filters.py`` and selected by
  ``core/attribute_index.py``'s ``AttributeIndex`` (one file per chunk, read from the
  dataset; the store's vectors kept in it, ``--exact-search-cache-mb``); at most
  ``exact_search_max_chunks`` allowed chunks are searched exactly over those vectors
  (``exact_ranking``), more through hnswlib with the allowed set as its filter. A repeated
  filter is answered from the index's cache of selections; the ``new filters`` row makes
  every query's filter new to it (the same chunks, and'ed with a ``ne`` that keeps all).
  Filters are parsed before the timed loop, as the peers' drivers build theirs.
- ``quiver (gRPC)`` (unless ``--no-grpc``): a real ``quiver serve`` process, each chunk
  ingested as a file with its attributes, queried as text (``bench/peers_grpc.py``);
  ranker ``none`` for the vector scenarios, ``auto`` for hybrid.
- Peers, each installed by this benchmark into a virtualenv of its own under
  ``.bench-venvs/<peer>`` (gitignored; never the project's ``.venv``) and run in a
  subprocess with that venv's python and a driver script (``bench/peer_drivers/``) that
  reads the data from ``.npy``/``.json`` files in a temp dir and writes its answers and
  timings back as JSON:
  ``chroma`` (``chromadb``, PersistentClient; hnsw space cosine, M 16, construction_ef 200,
  search_ef 256), ``lancedb`` (IVF_HNSW_FLAT index with one partition, i.e. one HNSW
  graph of unquantised vectors, cosine, m 16, ef_construction 200, ef 256 per query),
  ``qdrant-edge`` (``qdrant-edge-py``: Qdrant's embedded engine, HNSW m 16, ef_construct
  200, hnsw_ef 256, payload indexes on both keys).

Figures per engine and scenario (unfiltered, 10 %, 1 %; hybrid where the engine has it):
p50 / p99 latency of one query (the driver's own clock around the engine's query call),
QPS of one client (queries / wall time of the loop), recall@K against exact search
(numpy, cosine) over the same (filtered) set, counted with ties (a hit whose similarity
is at least the K-th exact similarity, less 1e-5, counts). Hybrid has no exact answer to
compare with, so only its latency is given. Results go to ``bench/results/peers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from quiver.server.config import Settings
from quiver.server.core.attribute_index import AttributeIndex
from quiver.server.core.blas_threads import one_blas_thread
from quiver.server.core.filters import Filter, RawFilter, parse_filter
from quiver.server.embedders.hashing import HashEmbedder
from quiver.server.index.hnsw import VectorIndex

from bench.results import RESULTS_DIR, save_results
from bench.search import sample_queries
from tests.support.corpus import corpus_files

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".bench-venvs"
DRIVERS = Path(__file__).resolve().parent / "peer_drivers"
DIM = 512
K = 10
M = 16
EF_CONSTRUCTION = 200
EF_SEARCH = 256
CHUNK_WORDS = 120
MIN_TAIL_WORDS = 20
TIE_EPSILON = 1e-5

Matrix = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: tuple[str, ...]  # pip requirements, into the peer's own venv
    module: str  # imported to check the venv is ready
    driver: str  # file in bench/peer_drivers/


PEERS = (
    Peer("chroma", ("chromadb",), "chromadb", "chroma_driver.py"),
    Peer("lancedb", ("lancedb", "pyarrow"), "lancedb", "lancedb_driver.py"),
    Peer("qdrant-edge", ("qdrant-edge-py",), "qdrant_edge", "qdrant_edge_driver.py"),
)


@dataclass(frozen=True)
class Scenario:
    name: str
    key: str | None  # attribute key of an ``eq`` filter, None: unfiltered
    value: int


SCENARIOS = (
    Scenario("unfiltered", None, 0),
    Scenario("filter 10%", "tenth", 3),
    Scenario("filter 1%", "hundredth", 7),
)


@dataclass
class Dataset:
    texts: list[str]
    vectors: Matrix  # (n, DIM), unit rows
    tenth: Ids
    hundredth: Ids
    queries: list[str]
    query_vectors: Matrix

    def column(self, key: str) -> Ids:
        return self.tenth if key == "tenth" else self.hundredth

    def allowed(self, scenario: Scenario) -> Ids | None:
        if scenario.key is None:
            return None
        return np.flatnonzero(self.column(scenario.key) == scenario.value).astype(np.int64)


# -- the dataset -------------------------------------------------------------------------


def split_words(text: str, size: int = CHUNK_WORDS, min_tail: int = MIN_TAIL_WORDS) -> list[str]:
    """Consecutive windows of ``size`` words; a last, shorter one only if ≥ ``min_tail``."""
    words = text.split()
    pieces = [words[i : i + size] for i in range(0, len(words), size)]
    return [" ".join(p) for p in pieces if len(p) == size or len(p) >= min_tail]


def chunk_texts(n: int) -> tuple[list[str], list[Path]]:
    """``n`` distinct chunk texts from the corpus, in corpus order, and the files used."""
    texts: list[str] = []
    seen: set[str] = set()
    paths: list[Path] = []
    for path in corpus_files(10**12):
        paths.append(path)
        for piece in split_words(path.read_text(encoding="utf-8")):
            if piece not in seen:
                seen.add(piece)
                texts.append(piece)
                if len(texts) == n:
                    return texts, paths
    raise SystemExit(f"the corpus holds only {len(texts):,} chunks, fewer than {n:,}")


def selective_keys(n: int, seed: int) -> tuple[Ids, Ids]:
    """``tenth`` (0…9) and ``hundredth`` (0…99) of each of ``n`` chunks: a seeded
    permutation modulo 10 and 100, so each value holds n/10 (n/100) chunks, ±1."""
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return order % 10, order % 100


def embed(texts: Sequence[str], batch: int = 2048) -> Matrix:
    embedder = HashEmbedder(DIM)
    parts = [embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return np.ascontiguousarray(np.vstack(parts), dtype=np.float32)


def build_dataset(chunks: int, queries: int, seed: int) -> Dataset:
    texts, paths = chunk_texts(chunks)
    tenth, hundredth = selective_keys(len(texts), seed)
    asked = sample_queries(paths, queries, seed)
    return Dataset(texts, embed(texts), tenth, hundredth, asked, embed(asked))


# -- exact answers and recall ----------------------------------------------------------------


def exact_kth(vectors: Matrix, queries: Matrix, allowed: Ids | None, k: int) -> npt.NDArray[Any]:
    """Per query, the ``k``-th best cosine similarity over the allowed rows (all rows when
    None); -inf when fewer than ``k`` rows are allowed (then every hit counts)."""
    pool = vectors if allowed is None else vectors[allowed]
    if pool.shape[0] < k:
        return np.full(queries.shape[0], -np.inf)
    sims = queries @ pool.T
    return np.partition(sims, -k, axis=1)[:, -k]


def recall_at_k(
    found: Sequence[Sequence[int]],
    vectors: Matrix,
    queries: Matrix,
    allowed: Ids | None,
    k: int = K,
) -> float:
    """Mean over queries of (hits that are allowed and at least as similar as the exact
    ``k``-th, less ``TIE_EPSILON``) / min(k, allowed rows). A hit outside the allowed set
    counts as a miss; duplicate ids count once."""
    kth = exact_kth(vectors, queries, allowed, k)
    members = None if allowed is None else set(allowed.tolist())
    wanted = min(k, vectors.shape[0] if allowed is None else len(allowed))
    if wanted == 0:
        return 1.0
    scores = []
    for q, hits in enumerate(found):
        ids = [i for i in dict.fromkeys(int(h) for h in hits) if members is None or i in members]
        ids = [i for i in ids if 0 <= i < vectors.shape[0]]
        sims = vectors[ids] @ queries[q] if ids else np.zeros(0, dtype=np.float32)
        good = int(np.count_nonzero(sims >= kth[q] - TIE_EPSILON))
        scores.append(min(good, wanted) / wanted)
    return float(np.mean(scores)) if scores else 0.0


def summarise(latencies: Sequence[float], wall: float) -> dict[str, float]:
    values = np.asarray(latencies, dtype=np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "qps": len(latencies) / wall if wall > 0 else 0.0,
    }


# -- Quiver in-process -------------------------------------------------------------------------


def eq_filter(key: str, value: int, *extra: RawFilter) -> Filter:
    comparison = RawFilter("eq", key, value, True, [])
    if not extra:
        return parse_filter(comparison)
    return parse_filter(RawFilter("and", "", None, False, [comparison, *extra]))


class DatasetRows:
    """The reads the attribute index makes from storage, over the dataset: one completed
    file per chunk (``str(id)``), as ``bench/peers_grpc.py`` ingests them."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def completed_attributes(
        self, store_id: str, file_ids: list[str] | None = None
    ) -> list[tuple[str, dict[str, int]]]:
        ids = range(len(self.data.texts)) if file_ids is None else [int(f) for f in file_ids]
        return [
            (str(i), {"tenth": int(self.data.tenth[i]), "hundredth": int(self.data.hundredth[i])})
            for i in ids
        ]

    def ids_by_file(self, store_id: str, file_ids: list[str] | None = None) -> dict[str, list[int]]:
        ids = range(len(self.data.texts)) if file_ids is None else [int(f) for f in file_ids]
        return {str(i): [i] for i in ids}

    def vectors_from_thread(self, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        return [(i, self.data.vectors[i].tobytes()) for i in ids]


def run_quiver(
    data: Dataset, work: Path, exact_max: int, cache_mb: int, fresh_filters: bool = False
) -> dict[str, Any]:
    """The engine as the core drives it (see the module docstring), timed per query.
    ``fresh_filters``: every query's filter is new to the attribute index (the wanted
    comparison and'ed with ``hundredth != -1 - q``, which keeps the same chunks), so no
    query is answered from its cache of selections."""
    one_blas_thread()  # as the server's Searcher does
    start = time.perf_counter()
    index = VectorIndex(work / "quiver.hnsw", DIM, M, EF_CONSTRUCTION, EF_SEARCH)
    labels = np.arange(len(data.texts), dtype=np.int64)
    for i in range(0, labels.size, 10_000):
        index.add(labels[i : i + 10_000], data.vectors[i : i + 10_000])
    rows = DatasetRows(data)
    attributes = AttributeIndex(rows, rows, max_stores=1, vector_bytes=cache_mb << 20)  # type: ignore[arg-type]
    attributes.select("store", eq_filter("tenth", -1), DIM)  # built, vectors read
    build = time.perf_counter() - start
    out: dict[str, Any] = {"build_s": build, "scenarios": {}}
    for scenario in SCENARIOS:
        key = scenario.key
        # Every query's filter parsed before the timed loop, as the peers' drivers build
        # theirs (the server parses it at its edge): the rows time the engine.
        filters = [
            None
            if key is None
            else eq_filter(
                key,
                scenario.value,
                *([RawFilter("ne", "hundredth", -1 - q, True, [])] if fresh_filters else []),
            )
            for q in range(len(data.queries))
        ]

        def search(q: int, filters: list[Filter | None] = filters) -> list[int]:
            query = data.query_vectors[q]
            filter = filters[q]
            if filter is None:
                found, _ = index.knn(query, K)
                return [int(x) for x in found[0] if x >= 0]
            selection = attributes.select("store", filter, DIM)
            if selection.scan is not None and len(selection.scan) <= exact_max:
                return [label for label, _ in selection.top(query, K)]
            found, _ = index.knn(query, K, filter=selection.members().__contains__)
            return [int(x) for x in found[0] if x >= 0]

        out["scenarios"][scenario.name] = timed_loop(search, len(data.queries))
    out["scenarios"]["hybrid"] = None
    out["hybrid_note"] = "hybrid n/a: the keyword ranking is the server's (tantivy), see gRPC"
    return out


def timed_loop(search: Callable[[int], list[int]], n: int) -> dict[str, Any]:
    search(0)  # warm-up, not counted
    latencies: list[float] = []
    found: list[list[int]] = []
    wall = time.perf_counter()
    for q in range(n):
        t = time.perf_counter()
        found.append(search(q))
        latencies.append(time.perf_counter() - t)
    return {"latencies": latencies, "wall_s": time.perf_counter() - wall, "found": found}


# -- peers in their own virtualenvs --------------------------------------------------------------


def peer_python(peer: Peer, log: Callable[[str], None]) -> Path:
    """The peer's venv python, creating the venv and installing the peer when needed."""
    venv = VENVS / peer.name
    python = venv / "bin" / "python"
    if python.exists():
        ready = subprocess.run(
            [str(python), "-c", f"import {peer.module}, numpy"], capture_output=True
        )
        if ready.returncode == 0:
            return python
    log(f"installing {' '.join(peer.requirements)} into {venv}")
    VENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "numpy", *peer.requirements], check=True)
    return python


def peer_version(python: Path, peer: Peer) -> str:
    dist = peer.requirements[0]
    done = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "?"


def write_inputs(data: Dataset, folder: Path) -> None:
    """What every driver reads: ``vectors.npy``, ``query_vectors.npy``, ``attributes.npy``
    (n rows of 2: tenth, hundredth), ``texts.json``, ``queries.json``, ``config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "vectors.npy", data.vectors)
    np.save(folder / "query_vectors.npy", data.query_vectors)
    np.save(folder / "attributes.npy", np.stack([data.tenth, data.hundredth], axis=1))
    (folder / "texts.json").write_text(json.dumps(data.texts), encoding="utf-8")
    (folder / "queries.json").write_text(json.dumps(data.queries), encoding="utf-8")
    config = {
        "k": K,
        "m": M,
        "ef_construction": EF_CONSTRUCTION,
        "ef_search": EF_SEARCH,
        "scenarios": [{"name": s.name, "key": s.key, "value": s.value} for s in SCENARIOS],
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


def run_peer(peer: Peer, inputs: Path, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    try:
        python = peer_python(peer, log)
    except subprocess.CalledProcessError as exc:
        return {"error": f"could not install {peer.requirements}: {exc}"}
    out_path = work / f"{peer.name}.json"
    store = work / f"{peer.name}-store"
    store.mkdir()
    log(f"{peer.name} {peer_version(python, peer)}: loading and querying")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["ANONYMIZED_TELEMETRY"] = "False"  # chroma
    env["RUST_LOG"] = "error"  # lancedb warns on every query otherwise
    done = subprocess.run(
        [str(python), str(DRIVERS / peer.driver), str(inputs), str(store), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not out_path.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        return {"error": "driver failed: " + " | ".join(tail)}
    result: dict[str, Any] = json.loads(out_path.read_text(encoding="utf-8"))
    result["version"] = peer_version(python, peer)
    return result


# -- report ------------------------------------------------------------------------------------


def figures(data: Dataset, raw: dict[str, Any]) -> dict[str, Any]:
    """Summaries (and recall) of one engine's raw answers."""
    if "error" in raw:
        return {"error": raw["error"]}
    out: dict[str, Any] = {
        "build_s": raw.get("build_s"),
        "version": raw.get("version"),
        "notes": raw.get("notes") or raw.get("hybrid_note"),
    }
    for scenario in SCENARIOS:
        run = raw["scenarios"].get(scenario.name)
        if run is None:
            out[scenario.name] = None
            continue
        allowed = data.allowed(scenario)
        summary = summarise(run["latencies"], run["wall_s"])
        summary["recall"] = recall_at_k(run["found"], data.vectors, data.query_vectors, allowed)
        out[scenario.name] = summary
    hybrid = raw["scenarios"].get("hybrid")
    out["hybrid"] = None if hybrid is None else summarise(hybrid["latencies"], hybrid["wall_s"])
    return out


def cell(summary: dict[str, float] | None, recall: bool = True) -> str:
    if summary is None:
        return "n/a"
    text = f"{summary['p50_ms']:.2f} / {summary['p99_ms']:.2f} ms, {summary['qps']:.0f} QPS"
    return text + (f", R {summary['recall']:.3f}" if recall else "")


def table(engines: dict[str, dict[str, Any]]) -> str:
    columns = [s.name for s in SCENARIOS] + ["hybrid"]
    lines = [
        "| engine | build s | " + " | ".join(columns) + " |",
        "|---|---:|" + "---|" * len(columns),
    ]
    for name, result in engines.items():
        if "error" in result:
            lines.append(f"| {name} | error: {result['error'][:200]} |")
            continue
        cells = [cell(result[c], recall=c != "hybrid") for c in columns]
        lines.append(f"| {name} | {result['build_s']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--peers", default=",".join(p.name for p in PEERS), help="comma-separated, or ''"
    )
    parser.add_argument(
        "--no-grpc", action="store_true", help="skip Quiver through a quiver serve process"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "peers.json")
    args = parser.parse_args()
    if args.chunks < 100 or args.queries < 1:
        parser.error("--chunks must be ≥ 100 and --queries ≥ 1")
    chosen = [p for p in PEERS if p.name in {x for x in args.peers.split(",") if x}]

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    log(f"building {args.chunks:,} chunks and {args.queries} queries")
    data = build_dataset(args.chunks, args.queries, args.seed)
    engines: dict[str, dict[str, Any]] = {}

    def save() -> None:  # after each engine, so an interrupted run keeps what it measured
        save_results(
            args.out,
            {
                "command": " ".join([".venv/bin/python -m bench.peers", *sys.argv[1:]]),
                "chunks": len(data.texts),
                "queries": len(data.queries),
                "k": K,
                "hnsw": {"m": M, "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH},
                "engines": engines,
            },
        )

    with tempfile.TemporaryDirectory(prefix="quiver-peers-") as tmp:
        work = Path(tmp)
        inputs = work / "inputs"
        write_inputs(data, inputs)
        log("quiver (in-process): loading and querying")
        settings = Settings()
        exact_max, cache_mb = settings.exact_search_max_chunks, settings.exact_search_cache_mb
        engines["quiver (in-process)"] = figures(data, run_quiver(data, work, exact_max, cache_mb))
        save()
        log("quiver (in-process, every filter new to its cache): loading and querying")
        engines["quiver (in-process, new filters)"] = figures(
            data, run_quiver(data, work, exact_max, cache_mb, fresh_filters=True)
        )
        save()
        for peer in chosen:
            engines[peer.name] = figures(data, run_peer(peer, inputs, work, log))
            shutil.rmtree(work / f"{peer.name}-store", ignore_errors=True)
            save()
        if not args.no_grpc:
            from bench.peers_grpc import run_grpc  # imports this module: only when asked

            log("quiver (gRPC, quiver serve): ingesting and querying")
            engines["quiver (gRPC)"] = figures(data, run_grpc(data, log))
            save()
    print(
        f"\n{len(data.texts):,} chunks, {len(data.queries)} queries, k={K}, {DIM}-d hash "
        f"vectors, cosine; cells: p50 / p99 latency, QPS (1 client), R = recall@{K}\n"
    )
    print(table(engines))
    for name, result in engines.items():
        if result.get("notes"):
            print(f"- {name}: {result['notes']}")
    log(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
