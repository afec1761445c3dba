"""Issue 15, items 4 and 5, with three ``quiver serve`` replicas on one PostgreSQL database:
search answers the same ids and scores from every replica, also after the owner of the store
is SIGKILLed (and once it is back), and another tenant's store is NOT_FOUND on every replica.
Prints how long the store went unserved after its owner was killed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from grpc import aio
from quiver.server.auth.keys import hash_key, new_key
from quiver.v1 import vector_stores_pb2 as pb

from tests.support.batch_helpers import create_batch, create_store, poll_batch, prose, upload_all
from tests.support.cluster import REPLICA_TIMEOUT_SECONDS, Cluster, ClusterReplica, shared_blobs
from tests.support.inproc import Tenant, _tenant
from tests.support.postgres import PostgresServer
from tests.support.rpc_helpers import error_reason

SERVED_BY = "x-quiver-replica"
QUERIES = ["the quiet river under the northern bridge", "lanterns over the harbour at dusk"]
FILES = 40

Hits = list[tuple[str, float, str]]


def keys_args() -> tuple[dict[str, str], list[str]]:
    keys = {"alice": new_key(), "bob": new_key()}
    inline = ",".join(f"{t} sha256:{hash_key(k).hex()}" for t, k in keys.items())
    return keys, ["--api-keys", inline]


def tenant(replica: ClusterReplica, name: str, keys: dict[str, str]) -> Tenant:
    assert replica.channel is not None
    return _tenant(name, keys[name], replica.channel)


def pid_of(replica_id: str) -> int:
    """A replica id is host:pid:random (core/job_leases.new_owner_id)."""
    return int(replica_id.split(":")[-2])


async def search(who: Tenant, store_id: str, query: str, timeout: float = 10) -> tuple[Hits, str]:
    call = who.stores.SearchVectorStore(
        pb.SearchVectorStoreRequest(vector_store_id=store_id, query=[query], max_num_results=10),
        metadata=who.metadata,
        timeout=timeout,
    )
    reply = await call
    served = [v for k, v in await call.trailing_metadata() or () if k == SERVED_BY]
    return [(h.file_id, h.score, h.content[0].text) for h in reply.data], str(served[0])


def same(a: Hits, b: Hits) -> bool:
    """The same files and texts in the same order, the same scores to float rounding (an
    index rebuilt from the database, or the exact ranking meanwhile, may round otherwise)."""
    return [(f, t) for f, _, t in a] == [(f, t) for f, _, t in b] and all(
        abs(x - y) <= 1e-5 for (_, x, _), (_, y, _) in zip(a, b, strict=True)
    )


async def answers(
    cluster: Cluster, keys: dict[str, str], store_id: str
) -> tuple[dict[str, Hits], set[str]]:
    """Every query on every live replica: the hits (all replicas' must be equal) and which
    replicas searched."""
    seen: dict[str, Hits] = {}
    served: set[str] = set()
    for replica in cluster.live():
        for query in QUERIES:
            hits, by = await search(tenant(replica, "alice", keys), store_id, query)
            assert hits, f"no hits on replica {replica.index}"
            if query in seen:
                assert same(hits, seen[query]), f"replica {replica.index} answers otherwise"
            seen[query] = hits
            served.add(by)
    return seen, served


async def test_search_from_every_replica_also_after_the_owner_is_killed(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    keys, key_args = keys_args()
    cluster = Cluster(
        tmp_path / "cluster", 3, database=postgres.url, extra=[*key_args, *shared_blobs(tmp_path)]
    )
    await cluster.start()
    try:
        alice = tenant(cluster[0], "alice", keys)
        store = await create_store(alice, name="replicated")
        ids = await upload_all(
            alice, [(f"doc{i}.txt", prose(i, 2500).encode()) for i in range(FILES)]
        )
        batch = await create_batch(alice, store.id, ids)
        done = await poll_batch(alice, store.id, batch.id, within=300)
        assert done.file_counts.completed == FILES

        before, served = await answers(cluster, keys, store.id)
        assert len(served) == 1, f"answered by several owners: {served}"
        owner_id = served.pop()
        owner = next(r for r in cluster.replicas if r.proc and r.proc.pid == pid_of(owner_id))

        # Another tenant: NOT_FOUND on every replica, with the same reason.
        for replica in cluster.live():
            try:
                await search(tenant(replica, "bob", keys), store.id, QUERIES[0])
            except aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                assert error_reason(exc) == "NOT_FOUND"
            else:
                raise AssertionError(f"bob searched alice's store on replica {replica.index}")

        cluster.kill(owner.index)
        killed = time.monotonic()
        survivor = next(r for r in cluster.live())
        hits, by = await search(tenant(survivor, "alice", keys), store.id, QUERIES[0])
        unserved = time.monotonic() - killed
        assert same(hits, before[QUERIES[0]]) and by != owner_id
        after, served = await answers(cluster, keys, store.id)
        assert all(same(after[q], before[q]) for q in QUERIES) and owner_id not in served
        print(f"\nthe store was served again {unserved * 1000:.0f} ms after its owner was killed")

        # Once the dead owner's heartbeat is out of the window, the survivors agree on one.
        await asyncio.sleep(float(REPLICA_TIMEOUT_SECONDS) + 1)
        after, served = await answers(cluster, keys, store.id)
        assert all(same(after[q], before[q]) for q in QUERIES) and len(served) == 1

        await cluster.restart(owner.index)
        await asyncio.sleep(1.5)  # a few heartbeats: every replica sees it
        after, served = await answers(cluster, keys, store.id)
        assert all(same(after[q], before[q]) for q in QUERIES) and len(served) == 1
    except BaseException:
        print(cluster.logs()[-20000:])
        raise
    finally:
        await cluster.close()
