"""Chroma (``chromadb``, PersistentClient) driven as ``bench/peers.py`` asks (see common.py).

HNSW: space cosine, M 16, construction_ef 200, search_ef 256 (collection metadata).
Filters: ``where={key: value}``. Hybrid: n/a (local Chroma has no keyword ranking; its
``where_document`` is a substring filter, not a ranking).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: bench.*

import chromadb  # type: ignore[import-not-found]

from bench.peer_drivers.common import arguments, timed_loop, write

BATCH = 5000


def main() -> None:
    data, store, out = arguments()
    cfg = data.config
    start = time.perf_counter()
    client = chromadb.PersistentClient(path=str(store))
    collection = client.create_collection(
        "bench",
        metadata={
            "hnsw:space": "cosine",
            "hnsw:M": cfg["m"],
            "hnsw:construction_ef": cfg["ef_construction"],
            "hnsw:search_ef": cfg["ef_search"],
        },
    )
    n = data.vectors.shape[0]
    for i in range(0, n, BATCH):
        end = min(i + BATCH, n)
        collection.add(
            ids=[str(j) for j in range(i, end)],
            embeddings=data.vectors[i:end],
            documents=data.texts[i:end],
            metadatas=[
                {"tenth": int(t), "hundredth": int(h)} for t, h in data.attributes[i:end].tolist()
            ],
        )
    build = time.perf_counter() - start
    scenarios: dict[str, Any] = {}
    for scenario in data.scenarios:
        where = None if scenario["key"] is None else {scenario["key"]: scenario["value"]}

        def search(q: int, where: Any = where) -> list[int]:
            found = collection.query(
                query_embeddings=[data.query_vectors[q]],
                n_results=data.k,
                where=where,
                include=[],
            )
            return [int(x) for x in found["ids"][0]]

        scenarios[scenario["name"]] = timed_loop(search, len(data.queries))
    scenarios["hybrid"] = None
    notes = "hybrid n/a: local Chroma has no keyword ranking"
    write(out, {"build_s": build, "notes": notes, "scenarios": scenarios})


if __name__ == "__main__":
    main()
