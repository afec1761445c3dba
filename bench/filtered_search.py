"""Filtered search latency next to unfiltered, with recall@10 against exact search over the
filtered set: SearchVectorStore over gRPC (ranker ``none``) from a real ``quiver serve``.

    .venv/bin/python -m bench.filtered_search --chunks 20000

The store is built as ``bench/search_scale.py`` builds it (written directly with the
server's storage code: real corpus windows of 100 tokens, ``hash`` 512-d vectors, the saved
hnswlib index). Then every completed file gets attributes: the files in a shuffled order
(``--seed``) are given ``pct`` = the share of the store's chunks before them, in percent
(0…99), and ``tag`` = "t<pct>". So ``pct < 10`` keeps ~10 % of the chunks (a range filter)
and ``tag in ["t0"]`` ~1 % (an ``in`` filter); the exact shares are printed. The ``new``
cases keep the same chunks with a filter new to the server each query (``case_filter``).
One client sends ``--queries`` queries one after another per case (after ``WARM_UP``).
Recall@10: the server's top 10 against numpy's exact top 10 over the chunks the filter
keeps (vectors read from SQLite after the server stopped), matched by chunk text (distinct
by construction).
Figures go to ``bench/results/filtered_search.json``. Timings depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import struct_pb2
from grpc import aio
from quiver.server.config import Settings
from quiver.server.embedders.hashing import HashEmbedder
from quiver.v1 import vector_stores_pb2, vector_stores_pb2_grpc

from bench.results import RESULTS_DIR, save_results
from bench.search import sample_queries
from bench.search_scale import WARM_UP, K, Latencies, build_store, start_server, tokenize_corpus

pb = vector_stores_pb2


def number(v: float) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=v)


def text_list(values: list[str]) -> struct_pb2.Value:
    out = struct_pb2.Value()
    out.list_value.values.extend(struct_pb2.Value(string_value=v) for v in values)
    return out


def case_filter(case: str, q: int) -> pb.Filter | None:
    """The filter of query number ``q`` of a case. The ``new`` cases change the filter's
    value every query (a bound ``9.5 + q/10⁴`` over whole numbers, so ``pct < 10`` as
    well; an extra tag no file has), so each is new to the server's cache of selections
    yet keeps the same files."""
    if case == "10%":
        return pb.Filter(type="lt", key="pct", value=number(10.0))
    if case == "10% new":
        return pb.Filter(type="lt", key="pct", value=number(9.5 + q / 10_000))
    if case == "1%":
        return pb.Filter(type="in", key="tag", value=text_list(["t0"]))
    if case == "1% new":
        return pb.Filter(type="in", key="tag", value=text_list(["t0", f"none-{q}"]))
    return None


CASES = ("unfiltered", "10%", "10% new", "1%", "1% new")


def kept_by(case: str, attributes: dict[str, Any]) -> bool:
    """What the case's filter keeps, written out independently of the server."""
    if case.startswith("10%"):
        return bool(attributes["pct"] < 10)
    if case.startswith("1%"):
        return bool(attributes["tag"] == "t0")
    return True


def label_files(db_path: Path, store_id: str, seed: int) -> dict[str, dict[str, Any]]:
    """Gives every file its ``pct`` and ``tag``; returns them by file id."""
    conn = sqlite3.connect(db_path)
    try:
        counts = conn.execute(
            "SELECT file_id, COUNT(*) FROM chunks WHERE vector_store_id = ? GROUP BY file_id "
            "ORDER BY file_id",
            (store_id,),
        ).fetchall()
        random.Random(seed).shuffle(counts)
        total = sum(c for _, c in counts)
        seen = 0
        out: dict[str, dict[str, Any]] = {}
        for file_id, count in counts:
            pct = min(99, seen * 100 // total)
            out[file_id] = {"pct": float(pct), "tag": f"t{pct}"}
            seen += count
        with conn:
            conn.executemany(
                "UPDATE vector_store_files SET attributes = ? "
                "WHERE vector_store_id = ? AND file_id = ?",
                [(json.dumps(a), store_id, f) for f, a in out.items()],
            )
        return out
    finally:
        conn.close()


async def measure(
    target: str, store_id: str, queries: list[str]
) -> tuple[dict[str, Latencies], dict[str, list[list[str]]]]:
    channel = aio.insecure_channel(target)
    try:
        stub = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
        runs: dict[str, Latencies] = {}
        texts: dict[str, list[list[str]]] = {}
        for name in CASES:

            async def search(query: str, q: int, name: str = name) -> Any:
                return await stub.SearchVectorStore(
                    pb.SearchVectorStoreRequest(
                        vector_store_id=store_id,
                        query=[query],
                        max_num_results=K,
                        ranking_options=pb.RankingOptions(ranker="none"),
                        filters=case_filter(name, q),
                    )
                )

            for i, query in enumerate(queries[:WARM_UP]):
                await search(query, -1 - i)  # filters of their own (new cases)
            run = Latencies()
            texts[name] = []
            for q, query in enumerate(queries):
                t = time.perf_counter()
                reply = await search(query, q)
                run.seconds.append(time.perf_counter() - t)
                run.hits += len(reply.data)
                texts[name].append([r.content[0].text for r in reply.data])
            runs[name] = run
        return runs, texts
    finally:
        await channel.close(None)


def exact_recall(
    db_path: Path,
    store_id: str,
    attributes: dict[str, dict[str, Any]],
    queries: list[str],
    found: dict[str, list[list[str]]],
    dim: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """(recall@10 per case, share of the chunks each case keeps)."""
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(
            "SELECT file_id, text, vector FROM chunks WHERE vector_store_id = ?", (store_id,)
        ).fetchall()
    finally:
        conn.close()
    vectors = np.stack([np.frombuffer(v, dtype=np.float32) for _, _, v in rows])
    query_vectors = HashEmbedder(dim).embed(queries)
    recall: dict[str, float] = {}
    share: dict[str, float] = {}
    for name in CASES:
        kept = np.asarray(
            [i for i, (f, _, _) in enumerate(rows) if kept_by(name, attributes[f])], dtype=np.int64
        )
        share[name] = len(kept) / len(rows)
        similarity = query_vectors @ vectors[kept].T
        hits = total = 0
        for q in range(len(queries)):
            top = kept[np.argsort(-similarity[q], kind="stable")[:K]]
            truth = {rows[i][1] for i in top}
            hits += len(truth & set(found[name][q]))
            total += len(truth)
        recall[name] = hits / total
    return recall, share


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=20_000, help="chunks in the store")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per case")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "filtered_search.json")
    args = parser.parse_args()
    settings = Settings()
    sources = tokenize_corpus()
    queries = sample_queries([s.path for s in sources], args.queries, args.seed)
    data_dir = Path(tempfile.mkdtemp(prefix="quiver-filtered-"))
    try:
        built = build_store(data_dir, sources, args.chunks, settings)
        db_path = data_dir / "quiver.sqlite3"
        attributes = label_files(db_path, built.store_id, args.seed)
        server, _ = start_server(data_dir, data_dir / "server.log", 600.0)
        try:
            runs, texts = asyncio.run(measure(server.target, built.store_id, queries))
        finally:
            server.stop()
        recall, share = exact_recall(
            db_path, built.store_id, attributes, queries, texts, settings.embedding_dimensions
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    latency = {name: run.summary() for name, run in runs.items()}
    base = latency["unfiltered"]["p50"]
    print(f"{args.chunks:,} chunks in {built.files:,} files; {len(queries)} queries per case")
    print(f"{'case':>10} {'kept':>7} {'p50 ms':>8} {'p99 ms':>8} {'p50/unf':>8} {'recall@10':>9}")
    for name in CASES:
        p50, p99 = latency[name]["p50"], latency[name]["p99"]
        print(
            f"{name:>10} {share[name]:>7.2%} {p50:>8.2f} {p99:>8.2f} {p50 / base:>8.2f} "
            f"{recall[name]:>9.3f}"
        )
    results: dict[str, Any] = {
        "benchmark": "filtered_search",
        "label": args.label,
        "chunks": args.chunks,
        "files": built.files,
        "queries": len(queries),
        "latency_ms": latency,
        "kept": share,
        "recall_at_10": recall,
    }
    save_results(args.out, results)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
