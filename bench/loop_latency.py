"""Does heavy work of one tenant freeze the server for everyone else?

While tenant A runs each of three heavy operations, a prober asks, every 50 ms, the health
service and a cheap RPC of tenant B (GetVectorStore of B's own store) and records how long
each answer took. Cases:

- ``filter``: searches with a valid filter of 253 nodes (``in`` lists of 256 values) on a
  store of 2,000 small files;
- ``ingest``: ingest of one large text file (``--big-mb``);
- ``delete``: deleting the store that holds that file.

Prints, per case, the operation's own duration and the max and p99 latency of health and of
B's RPC. Runs against a ``quiver serve`` process started for the run (two tenants, keyed).

    .venv/bin/python -m bench.loop_latency --files 2000 --big-mb 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

from grpc import aio
from quiver.server.auth.keys import hash_key, new_key
from quiver.v1 import vector_stores_pb2

from tests.support.loop_probe import (
    Caller,
    Probe,
    big_text,
    create_store,
    filter_nodes,
    filtered_search,
    heavy_filter,
    ingest,
    probe_while,
    store_of_small_files,
    upload,
)
from tests.support.serve import ServerProcess


async def measure(
    target: str,
    heavy: Caller,
    other: Caller,
    *,
    files: int,
    big_mb: float,
    searches: int = 2,
    report: Callable[[str, dict[str, Any]], None] = lambda case, figures: None,
) -> dict[str, dict[str, Any]]:
    """The three cases; returns {case: figures}. ``report`` is called after each case."""
    other_store = await create_store(other, "the other tenant's store")
    results: dict[str, dict[str, Any]] = {}

    def record(case: str, probe: Probe, seconds: float, **extra: Any) -> None:
        results[case] = {"seconds": round(seconds, 2), **probe.summary(), **extra}
        report(case, results[case])

    many = await store_of_small_files(heavy, files)
    probe, seconds = await probe_while(
        filtered_search(heavy, many, searches), target, other, other_store
    )
    record("filter", probe, seconds, searches=searches, nodes=filter_nodes(heavy_filter()))

    big_store = await create_store(heavy, "one big file")
    big_id = await upload(heavy, "big.txt", big_text(big_mb))
    probe, seconds = await probe_while(
        ingest(heavy, big_store, [big_id]), target, other, other_store
    )
    record("ingest", probe, seconds, megabytes=big_mb)

    probe, seconds = await probe_while(
        heavy.stores.DeleteVectorStore(
            vector_stores_pb2.DeleteVectorStoreRequest(vector_store_id=big_store),
            metadata=heavy.metadata,
        ),
        target,
        other,
        other_store,
    )
    record("delete", probe, seconds)
    return results


async def main_async(files: int, big_mb: float, searches: int) -> None:
    keys = {"heavy": new_key(), "other": new_key()}
    inline = ",".join(f"{t} sha256:{hash_key(k).hex()}" for t, k in keys.items())
    server = ServerProcess.start("--api-keys", inline)
    try:
        async with aio.insecure_channel(server.target) as channel:

            def report(case: str, figures: dict[str, Any]) -> None:
                print(case, json.dumps(figures), flush=True)

            await measure(
                server.target,
                Caller.on(channel, keys["heavy"]),
                Caller.on(channel, keys["other"]),
                files=files,
                big_mb=big_mb,
                searches=searches,
                report=report,
            )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="small files in the store")
    parser.add_argument("--big-mb", type=float, default=20.0, help="size of the big text file")
    parser.add_argument("--searches", type=int, default=2, help="filtered searches in a row")
    args = parser.parse_args()
    asyncio.run(main_async(args.files, args.big_mb, args.searches))


if __name__ == "__main__":
    main()
