"""Search QPS through 1 replica next to 3 replicas, in one run, and what a replica failure
costs: three ``quiver serve`` replicas (tests/support/cluster.py) on one PostgreSQL server
(tests/support/postgres.py) and a shared ``--blobs`` directory, one store of small text files.

For each ranker (``none``: vector only, ``auto``: fused with keywords), ``--clients``
concurrent clients (one channel each) search the store for ``--seconds``: first all through
one replica (the store's owner, so nothing is forwarded), then spread round-robin over the
three replicas' ports (a non-owner forwards the search to the owner over gRPC). Then the
owner is SIGKILLed and a client on another replica searches until it is answered again: the
failover time.

    .venv/bin/python -m bench.replica_qps --files 300 --clients 16 --seconds 8

Prints a table with the ratio; writes bench/results/replica_qps.json and .txt.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from grpc import aio
from quiver.v1 import vector_stores_pb2 as pb

from bench.results import RESULTS_DIR, save_results
from tests.support.batch_helpers import create_batch, create_store, poll_batch, upload_all
from tests.support.cluster import Cluster, ClusterReplica, shared_blobs
from tests.support.cluster_common import keys_args, small_files, tenant
from tests.support.cluster_db import pid_of
from tests.support.inproc import Tenant, _tenant
from tests.support.postgres import PostgresServer

SERVED_BY = "x-quiver-replica"
QUERIES = [
    "the quiet river under the northern bridge",
    "kaloten vorqu misra",
    "lanterns over the harbour at dusk",
    "delpo shune anis",
]


def request(store_id: str, query: str, ranker: str) -> pb.SearchVectorStoreRequest:
    return pb.SearchVectorStoreRequest(
        vector_store_id=store_id,
        query=[query],
        max_num_results=10,
        ranking_options=pb.RankingOptions(ranker=ranker),
    )


async def served_by(who: Tenant, store_id: str) -> str:
    call = who.stores.SearchVectorStore(
        request(store_id, QUERIES[0], "none"), metadata=who.metadata, timeout=10
    )
    await call
    return next(str(v) for k, v in await call.trailing_metadata() or () if k == SERVED_BY)


async def qps(clients: list[Tenant], store_id: str, ranker: str, seconds: float) -> float:
    """Searches answered per second by ``clients`` searching back to back."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    done = 0

    async def client(i: int, who: Tenant) -> None:
        nonlocal done
        for n in itertools.count(i):
            if loop.time() >= stop:
                return
            reply = await who.stores.SearchVectorStore(
                request(store_id, QUERIES[n % len(QUERIES)], ranker),
                metadata=who.metadata,
                timeout=30,
            )
            assert reply.data, "no hits"
            done += 1

    started = loop.time()
    await asyncio.gather(*(client(i, who) for i, who in enumerate(clients)))
    return done / (loop.time() - started)


async def failover(
    cluster: Cluster, keys: dict[str, str], owner: ClusterReplica, store_id: str
) -> float:
    """Seconds from the owner's SIGKILL until a search on another replica is answered."""
    survivor = next(r for r in cluster.replicas if r is not owner)
    who = tenant(survivor, "alice", keys)
    cluster.kill(owner.index)
    killed = time.monotonic()
    while time.monotonic() - killed < 120:
        try:
            reply = await who.stores.SearchVectorStore(
                request(store_id, QUERIES[0], "none"), metadata=who.metadata, timeout=10
            )
            if reply.data:
                return time.monotonic() - killed
        except aio.AioRpcError:  # unavailable until another replica takes the store
            pass
        await asyncio.sleep(0.01)
    raise RuntimeError("no replica served the store within 120 s of its owner's death")


async def bench(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    pg = PostgresServer.start(root / "postgres")
    keys, key_args = keys_args()
    cluster = Cluster(root / "cluster", 3, database=pg.url, extra=[*key_args, *shared_blobs(root)])
    try:
        await cluster.start()
        alice = tenant(cluster[0], "alice", keys)
        store = await create_store(alice, name="qps")
        ids = await upload_all(alice, small_files(args.files))
        batch = await create_batch(alice, store.id, ids)
        await poll_batch(alice, store.id, batch.id, within=600)

        owner_id = await served_by(alice, store.id)
        owner = next(r for r in cluster.replicas if r.proc and r.proc.pid == pid_of(owner_id))
        # One channel per client: through the owner only, or spread over the three replicas.
        singles = [Client(owner, keys) for _ in range(args.clients)]
        spread = [Client(cluster.replicas[i % len(cluster)], keys) for i in range(args.clients)]
        rows: dict[str, dict[str, float]] = {}
        try:
            for ranker in ("none", "auto"):
                await qps([c.tenant for c in spread], store.id, ranker, 1.0)  # warm up
                one = await qps([c.tenant for c in singles], store.id, ranker, args.seconds)
                three = await qps([c.tenant for c in spread], store.id, ranker, args.seconds)
                rows[ranker] = {"1 replica": one, "3 replicas": three, "ratio": three / one}
        finally:
            for c in [*singles, *spread]:
                await c.close()
        unserved = await failover(cluster, keys, owner, store.id)
        return {"qps": rows, "failover_seconds": unserved}
    finally:
        await cluster.close()
        pg.stop()


class Client:
    """A client's own channel to one replica."""

    def __init__(self, replica: ClusterReplica, keys: dict[str, str]) -> None:
        self.channel = aio.insecure_channel(replica.target)
        self.tenant = _tenant("alice", keys["alice"], self.channel)

    async def close(self) -> None:
        await self.channel.close(None)


def table(result: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"search QPS, {args.files} small files in one store, {args.clients} concurrent "
        f"clients, {args.seconds:g} s per cell",
        f"{'ranker':<8}{'1 replica':>12}{'3 replicas':>12}{'3 / 1':>8}",
    ]
    for ranker, row in result["qps"].items():
        lines.append(
            f"{ranker:<8}{row['1 replica']:>12.1f}{row['3 replicas']:>12.1f}{row['ratio']:>8.2f}"
        )
    lines.append(
        f"failover: another replica served the store {result['failover_seconds'] * 1000:.0f} ms "
        "after its owner was SIGKILLed"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    # Not under pytest's temporary directories: PostgreSQL runs as another user.
    root = Path(tempfile.mkdtemp(prefix="quiver-bench-replicas-"))
    try:
        result = asyncio.run(bench(root, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = table(result, args)
    print(text)
    save_results(
        RESULTS_DIR / "replica_qps.json",
        {
            "benchmark": "replica_qps",
            "files": args.files,
            "clients": args.clients,
            "seconds": args.seconds,
            **result,
        },
    )
    (RESULTS_DIR / "replica_qps.txt").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
