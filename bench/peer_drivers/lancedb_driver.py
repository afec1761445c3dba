"""LanceDB (``lancedb``, embedded) driven as ``bench/peers.py`` asks (see common.py).

Vector index: ``IVF_HNSW_FLAT`` with one partition (one HNSW graph of unquantised
vectors over every row, as the other engines have; LanceDB has no plain-HNSW kind), cosine, m 16,
ef_construction 200, ef 256 per query. Scalar indexes: BITMAP on ``tenth`` and
``hundredth``; full-text index on ``text``. Filters: SQL ``where`` applied before the
vector search (``prefilter=True``). Hybrid: ``query_type="hybrid"`` (vector + full-text,
LanceDB's default reranker, RRF).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: bench.*

import lancedb  # type: ignore[import-not-found]
import pyarrow as pa  # type: ignore[import-not-found]

from bench.peer_drivers.common import arguments, timed_loop, write


def main() -> None:
    data, store, out = arguments()
    cfg = data.config
    n, dim = data.vectors.shape
    start = time.perf_counter()
    db = lancedb.connect(str(store))
    rows = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.vectors.ravel()), dim),
            "tenth": pa.array(data.attributes[:, 0], pa.int64()),
            "hundredth": pa.array(data.attributes[:, 1], pa.int64()),
            "text": pa.array(data.texts, pa.string()),
        }
    )
    table = db.create_table("bench", rows)
    table.create_index(
        metric="cosine",
        index_type="IVF_HNSW_FLAT",
        num_partitions=1,
        m=cfg["m"],
        ef_construction=cfg["ef_construction"],
    )
    table.create_scalar_index("tenth", index_type="BITMAP")
    table.create_scalar_index("hundredth", index_type="BITMAP")
    table.create_fts_index("text")
    build = time.perf_counter() - start
    k = data.k
    ef = cfg["ef_search"]
    scenarios: dict[str, Any] = {}
    for scenario in data.scenarios:
        where = None if scenario["key"] is None else f"{scenario['key']} = {scenario['value']}"

        def search(q: int, where: str | None = where) -> list[int]:
            query = table.search(data.query_vectors[q]).distance_type("cosine").limit(k).ef(ef)
            if where is not None:
                query = query.where(where, prefilter=True)
            return [int(x) for x in query.select(["id"]).to_arrow()["id"].to_pylist()]

        scenarios[scenario["name"]] = timed_loop(search, len(data.queries))

    def hybrid(q: int) -> list[int]:
        query = (
            table.search(query_type="hybrid")
            .vector(data.query_vectors[q])
            .text(data.queries[q])
            .distance_type("cosine")
            .limit(k)
        )
        return [int(x) for x in query.select(["id"]).to_arrow()["id"].to_pylist()]

    notes = "IVF_HNSW_FLAT (1 partition); hybrid: vector + FTS, RRF"
    try:
        scenarios["hybrid"] = timed_loop(hybrid, len(data.queries))
    except Exception as exc:  # reported, not fatal
        scenarios["hybrid"] = None
        notes += f"; hybrid n/a: {exc}"
    write(out, {"build_s": build, "notes": notes, "scenarios": scenarios})


if __name__ == "__main__":
    main()
