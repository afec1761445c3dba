"""Qdrant's embedded engine (``qdrant-edge-py``, an ``EdgeShard``) driven as
``bench/peers.py`` asks (see common.py).

HNSW: m 16, ef_construct 200 (shard config), hnsw_ef 256 per query; the shard is
optimised (segments indexed) before querying. Payload indexes: integer on ``tenth`` and
``hundredth``, a scoring (BM25) text index on ``text``. Filters: ``must`` a ``MatchValue``.
Hybrid: two prefetches (dense nearest, ``TextQuery`` BM25 on ``text``) fused by RRF.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: bench.*

import qdrant_edge as qe  # type: ignore[import-not-found]

from bench.peer_drivers.common import arguments, timed_loop, write

BATCH = 1000
RRF_K = 60


def main() -> None:
    data, store, out = arguments()
    cfg = data.config
    start = time.perf_counter()
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=data.vectors.shape[1], distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(
            m=cfg["m"], ef_construct=cfg["ef_construction"], full_scan_threshold=10_000
        ),
    )
    shard = qe.EdgeShard.create(str(store / "shard"), config)
    shard.update(qe.UpdateOperation.create_field_index("tenth", qe.PayloadSchemaType.Integer))
    shard.update(qe.UpdateOperation.create_field_index("hundredth", qe.PayloadSchemaType.Integer))
    shard.update(
        qe.UpdateOperation.create_field_index(
            "text",
            qe.TextIndexParams(tokenizer=qe.TokenizerType.Word, lowercase=True, scoring=True),
        )
    )
    n = data.vectors.shape[0]
    for i in range(0, n, BATCH):
        end = min(i + BATCH, n)
        points = [
            qe.Point(
                j,
                data.vectors[j].tolist(),
                {
                    "tenth": int(data.attributes[j, 0]),
                    "hundredth": int(data.attributes[j, 1]),
                    "text": data.texts[j],
                },
            )
            for j in range(i, end)
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
    shard.flush()
    shard.optimize()
    build = time.perf_counter() - start
    params = qe.SearchParams(hnsw_ef=cfg["ef_search"])
    k = data.k
    scenarios: dict[str, Any] = {}
    for scenario in data.scenarios:
        where = (
            None
            if scenario["key"] is None
            else qe.Filter(
                must=[qe.FieldCondition(scenario["key"], match=qe.MatchValue(scenario["value"]))]
            )
        )

        def search(q: int, where: Any = where) -> list[int]:
            request = qe.QueryRequest(
                limit=k,
                query=qe.Query.Nearest(data.query_vectors[q].tolist()),
                filter=where,
                params=params,
                with_payload=False,
                with_vector=False,
            )
            return [int(p.id) for p in shard.query(request)]

        scenarios[scenario["name"]] = timed_loop(search, len(data.queries))

    def hybrid(q: int) -> list[int]:
        request = qe.QueryRequest(
            limit=k,
            prefetches=[
                qe.Prefetch(
                    limit=4 * k,
                    query=qe.Query.Nearest(data.query_vectors[q].tolist()),
                    params=params,
                ),
                qe.Prefetch(limit=4 * k, query=qe.TextQuery("text", data.queries[q])),
            ],
            query=qe.Fusion.Rrf(k=RRF_K),
            with_payload=False,
            with_vector=False,
        )
        return [int(p.id) for p in shard.query(request)]

    notes = f"hybrid: dense + BM25 text index (TextQuery), RRF k={RRF_K}, 4k candidates each"
    try:
        scenarios["hybrid"] = timed_loop(hybrid, len(data.queries))
    except Exception as exc:  # an engine without the feature: reported, not fatal
        scenarios["hybrid"] = None
        notes = f"hybrid n/a: {exc}"
    shard.close()
    write(out, {"build_s": build, "notes": notes, "scenarios": scenarios})


if __name__ == "__main__":
    main()
