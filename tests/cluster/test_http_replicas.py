"""Issue 15, item 4 through the HTTP (OpenAI REST) edge, with three ``quiver serve``
replicas on one PostgreSQL database: an HTTP search answers the same ids and scores from
every replica's HTTP port, searched by the store's owner (the ``x-quiver-replica`` header
names it, as the gRPC trailer does); another tenant's store is 404 on every replica; after the
owner is SIGKILLed, the survivors answer the same, themselves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from google.protobuf import struct_pb2
from quiver.server.auth.keys import hash_key, new_key
from quiver.v1 import vector_stores_pb2 as pb

from tests.support.batch_helpers import create_batch, create_store, poll_batch, prose, upload_all
from tests.support.cluster import Cluster, ClusterReplica, shared_blobs
from tests.support.inproc import _tenant
from tests.support.postgres import PostgresServer
from tests.support.serve import free_port

SERVED_BY = "x-quiver-replica"
QUERIES = ["the quiet river under the northern bridge", "lanterns over the harbour at dusk"]
FILES = 20

Hits = list[tuple[str, float, str]]


def keys_args() -> tuple[dict[str, str], list[str]]:
    keys = {"alice": new_key(), "bob": new_key()}
    inline = ",".join(f"{t} sha256:{hash_key(k).hex()}" for t, k in keys.items())
    return keys, ["--api-keys", inline]


def with_http(cluster: Cluster) -> dict[int, int]:
    """Each replica's HTTP listener on a port of its own (the last --http-listen wins)."""
    ports = {}
    for replica in cluster.replicas:
        ports[replica.index] = free_port()
        replica.command += ["--http-listen", f"127.0.0.1:{ports[replica.index]}"]
    return ports


async def http_search(
    port: int, key: str, store_id: str, body: dict[str, Any]
) -> tuple[int, Any, str]:
    """The status, the JSON body and the replica that searched."""
    url = f"http://127.0.0.1:{port}/v1/vector_stores/{store_id}/search"
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(url, json=body, headers={"authorization": f"Bearer {key}"})
    return response.status_code, response.json(), response.headers.get(SERVED_BY, "")


def hits_of(page: Any) -> Hits:
    return [(h["file_id"], h["score"], h["content"][0]["text"]) for h in page["data"]]


def same(a: Hits, b: Hits) -> bool:
    """The same files and texts in the same order, the same scores to float rounding (an
    index rebuilt from the database may round otherwise)."""
    return [(f, t) for f, _, t in a] == [(f, t) for f, _, t in b] and all(
        abs(x - y) <= 1e-5 for (_, x, _), (_, y, _) in zip(a, b, strict=True)
    )


BODIES: list[dict[str, Any]] = [
    *({"query": q, "max_num_results": 10} for q in QUERIES),
    {
        "query": QUERIES[0],
        "filters": {"type": "eq", "key": "kind", "value": "doc"},
        "ranking_options": {"ranker": "none"},
    },
]


async def answers(
    cluster: Cluster, ports: dict[int, int], key: str, store_id: str
) -> tuple[list[Hits], set[str]]:
    """Every body on every live replica's HTTP port: the hits (equal on all replicas) and
    the replicas that searched."""
    seen: list[Hits] = []
    served: set[str] = set()
    for replica in cluster.live():
        for i, body in enumerate(BODIES):
            status, page, by = await http_search(ports[replica.index], key, store_id, body)
            assert status == 200, page
            hits = hits_of(page)
            assert hits, f"no hits on replica {replica.index}"
            if len(seen) > i:
                assert same(hits, seen[i]), f"replica {replica.index} answers otherwise"
            else:
                seen.append(hits)
            served.add(by)
    return seen, served


def pid_of(replica_id: str) -> int:
    """A replica id is host:pid:random (core/job_leases.new_owner_id)."""
    return int(replica_id.split(":")[-2])


async def grpc_served_by(replica: ClusterReplica, key: str, store_id: str) -> tuple[Hits, str]:
    assert replica.channel is not None
    alice = _tenant("alice", key, replica.channel)
    call = alice.stores.SearchVectorStore(
        pb.SearchVectorStoreRequest(
            vector_store_id=store_id, query=[QUERIES[0]], max_num_results=10
        ),
        metadata=alice.metadata,
        timeout=30,
    )
    reply = await call
    served = [v for k, v in await call.trailing_metadata() or () if k == SERVED_BY]
    return [(h.file_id, h.score, h.content[0].text) for h in reply.data], str(served[0])


async def test_http_search_from_every_replica_also_after_the_owner_is_killed(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    keys, key_args = keys_args()
    cluster = Cluster(
        tmp_path / "cluster", 3, database=postgres.url, extra=[*key_args, *shared_blobs(tmp_path)]
    )
    ports = with_http(cluster)
    await cluster.start()
    try:
        assert cluster[0].channel is not None
        alice = _tenant("alice", keys["alice"], cluster[0].channel)
        store = await create_store(alice, name="replicated-http")
        ids = await upload_all(
            alice, [(f"doc{i}.txt", prose(200 + i, 2500).encode()) for i in range(FILES)]
        )
        kind = {"kind": struct_pb2.Value(string_value="doc")}
        batch = await create_batch(alice, store.id, ids, attributes=kind)
        done = await poll_batch(alice, store.id, batch.id, within=300)
        assert done.file_counts.completed == FILES

        before, served = await answers(cluster, ports, keys["alice"], store.id)
        assert len(served) == 1, f"answered by several replicas: {served}"
        owner_id = served.pop()
        # The HTTP edge names the same owner as the gRPC one, with the same hits.
        for replica in cluster.live():
            hits, by = await grpc_served_by(replica, keys["alice"], store.id)
            assert by == owner_id and same(hits, before[0])
        owner = next(r for r in cluster.replicas if r.proc and r.proc.pid == pid_of(owner_id))

        # Another tenant: 404 on every replica, with the same error.
        errors = set()
        for replica in cluster.live():
            status, page, _ = await http_search(
                ports[replica.index], keys["bob"], store.id, BODIES[0]
            )
            assert status == 404, page
            errors.add((page["error"]["code"], page["error"]["message"]))
        assert len(errors) == 1, errors

        cluster.kill(owner.index)
        killed = time.monotonic()
        survivor = cluster.live()[0]
        status, page, by = await http_search(
            ports[survivor.index], keys["alice"], store.id, BODIES[0]
        )
        unserved = time.monotonic() - killed
        assert status == 200 and same(hits_of(page), before[0]) and by != owner_id
        after, served = await answers(cluster, ports, keys["alice"], store.id)
        assert all(same(a, b) for a, b in zip(after, before, strict=True))
        assert owner_id not in served
        print(f"\nHTTP: the store was served again {unserved * 1000:.0f} ms after its owner died")
    except BaseException:
        print(cluster.logs()[-20000:])
        raise
    finally:
        await cluster.close()
