"""Ingest throughput on a Ray cluster of 1 node next to 2 nodes (one CPU each), in one run:
the cluster of ``tests/support/ray_cluster.py`` (network namespaces; root), ``quiver serve
--ingest ray:auto`` on the head, the same files uploaded, then CreateFileBatch → terminal
WatchFileBatch (the clock runs from the batch's creation to its end).

    .venv/bin/python -m bench.ray_nodes --files 200
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from grpc import aio
from quiver.server.config import Settings

from bench.results import RESULTS_DIR, save_results
from tests.support.batch_helpers import (
    counts,
    create_batch,
    create_store,
    prose,
    upload_all,
    watch_to_end,
)
from tests.support.inproc import _tenant, keyed
from tests.support.ray_cluster import RayCluster
from tests.support.serve import is_serving

PORT = 50051


async def one_batch(target: str, key: str, docs: list[tuple[str, bytes]]) -> float:
    channel = aio.insecure_channel(target)
    try:
        tenant = _tenant("alice", key, channel)
        store = await create_store(tenant)
        ids = await upload_all(tenant, docs)
        started = time.perf_counter()
        batch = await create_batch(tenant, store.id, ids)
        messages = await watch_to_end(tenant, store.id, batch.id, within=1800)
        seconds = time.perf_counter() - started
        done = counts(messages[-1].file_batch.file_counts)
        assert done == (0, len(docs), 0, 0, len(docs)), done
        return seconds
    finally:
        await channel.close(None)


def run(nodes: int, docs: list[tuple[str, bytes]]) -> float:
    cluster = RayCluster.start(cpus_per_node=1, nodes=nodes)
    try:
        root = Path(tempfile.mkdtemp(prefix="quiver-bench-nodes-"))
        cfg, keys = keyed(Settings(data_dir=root / "data"))
        (root / "data").mkdir()
        proc = cluster.serve_on_head(PORT, root / "data", cfg.api_keys, root / "serve.log", nodes)
        target = f"{cluster.head_ip}:{PORT}"
        try:
            deadline = time.monotonic() + 180
            while not is_serving(target):
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.5)
            return asyncio.run(one_batch(target, keys["alice"], docs))
        finally:
            proc.terminate()
            proc.wait(60)
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--kb", type=int, default=50, help="size of each file")
    args = parser.parse_args()
    docs = [(f"doc{i}.txt", prose(i, args.kb * 1000).encode()) for i in range(args.files)]
    seconds = {n: run(n, docs) for n in (1, 2)}
    for n, s in seconds.items():
        print(f"{n} Ray node(s), 1 CPU each: {s:7.2f} s  {args.files / s:6.1f} files/s")
    print(f"2 nodes / 1 node (files/s): {seconds[1] / seconds[2]:.2f}")
    save_results(
        RESULTS_DIR / "ray_nodes.json",
        {
            "benchmark": "ray_nodes",
            "files": args.files,
            "kb_per_file": args.kb,
            "seconds": {str(n): s for n, s in seconds.items()},
        },
    )


if __name__ == "__main__":
    main()
