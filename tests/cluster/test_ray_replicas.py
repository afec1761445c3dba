"""Issue 15, items 1 and 6 in the full setup: three ``quiver serve`` replicas on one
PostgreSQL database and a shared ``--blobs`` directory, each ingesting through
``--ingest ray://HEAD:10001`` (the head's Ray Client server) on a two-node Ray cluster
(network namespaces, ``tests/support/ray_cluster.py``; root), a batch of a few hundred small
files:

1. the batch's files spread over both Ray nodes (each runs at least a quarter of them), its
   counts are exact on every replica, and its chunks (texts, token counts, vectors, chunk
   indexes) equal those of a single-node run of the same files (an in-process server with
   the local worker pool and its own SQLite database);
6. the worker node SIGKILLed mid-batch (a fifth of the files done, a file's task running
   there): the batch completes, no file stays ``in_progress``, every file is settled once
   (one transition each, no duplicate chunk in PostgreSQL).

Which node ran a file: each replica's ``RayExecutor`` counts finished tasks by the address
of the node that ran them and logs the counts at a clean stop (``files_by_node``).

Each test starts its own Ray cluster (see ``ray_nodes``) and its own PostgreSQL server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from quiver.server.config import Settings
from quiver.server.ingest.ray_executor import local_task_pids

from tests.support.batch_helpers import (
    B_COMPLETED,
    check_stream,
    counts,
    create_batch,
    create_store,
    get_batch,
    poll_batch,
    stored_chunks,
    upload_all,
    watch_to_end,
)
from tests.support.cluster import Cluster, shared_blobs
from tests.support.cluster_common import keys_args, small_files, tenant, until
from tests.support.cluster_db import assert_exactly_once, store_files
from tests.support.cluster_db import stored_chunks as pg_stored_chunks
from tests.support.inproc import serving
from tests.support.postgres import PostgresServer
from tests.support.ray_cluster import RAY_CLIENT_PORT, RayCluster, cluster_missing, files_by_node

pytestmark = [pytest.mark.slow]

FILES = 240
FILE_BYTES = 15_000
"""Big enough (a few chunks each) that parsing, chunking and embedding, not the per-task
overhead nor a node's first (cold) worker, set each node's share: with 1.5 kB files the
head, nearer the submitter, ran 70-100 % of them (a cold worker on the other node spends
seconds on its imports while the head runs dozens of files)."""
RAY_TASKS = 4
"""Ray tasks in flight per replica: twice the cluster's two CPUs, so tasks wait in Ray,
whose SPREAD then alternates the nodes (with as many as CPUs, a freed CPU takes the next
task, and the head, nearer the submitter, frees its CPU sooner)."""


@pytest.fixture
def ray_nodes() -> Iterator[RayCluster]:
    """A Ray cluster per test (module scope saved ~35 s, but on this loaded machine the
    second test's Ray Client sessions failed to start now and then; a fresh cluster each
    avoids carrying a first test's leftovers into the second)."""
    reason = cluster_missing()
    if reason is not None:
        pytest.skip(reason)
    started = RayCluster.start(cpus_per_node=1)
    try:
        yield started
    finally:
        started.stop()


@asynccontextmanager
async def replicas(
    root: Path, url: str, ray_nodes: RayCluster, key_args: list[str]
) -> AsyncIterator[Cluster]:
    """Three replicas on ``url`` with a shared blob directory, ingesting through the Ray
    cluster's Ray Client server; their logs are printed when the block fails."""
    ingest = ["--ingest", f"ray://{ray_nodes.head_ip}:{RAY_CLIENT_PORT}"]
    ingest += ["--ray-tasks", str(RAY_TASKS)]
    cluster = Cluster(
        root / "cluster", 3, database=url, extra=[*key_args, *shared_blobs(root), *ingest]
    )
    try:
        started = time.monotonic()
        await start_one_at_a_time(cluster)
        print(f"\nthree replicas on Ray SERVING in {time.monotonic() - started:.1f} s")
        yield cluster
    except BaseException:
        print(cluster.logs()[-30000:])
        raise
    finally:
        await cluster.close()


RAY_CLIENT_SESSION_FAILED = (
    "Starting Ray client server failed",
    "Initialization failure from server",
)
"""How the head's Ray Client proxy reports a session server process that exited at once
(the second: its psutil then finds the process a zombie)."""


async def start_one_at_a_time(cluster: Cluster, attempts: int = 3) -> None:
    """Each replica once the one before serves. Each opens a Ray Client session, for which
    the head starts a server process; on this loaded 2-core machine that process now and
    then exits at once (Ray's "Starting Ray client server failed" or "Initialization failure
    from server", cause not found), and
    the replica exits at start (it cannot reach Ray): such a replica is started again, up
    to ``attempts`` times, and said so."""
    for replica in cluster.replicas:
        for attempt in range(1, attempts + 1):
            try:
                await cluster.restart(replica.index, within=120)
                break
            except AssertionError:
                log = replica.log()
                failed = [text for text in RAY_CLIENT_SESSION_FAILED if text in log]
                if attempt == attempts or not failed:
                    raise
                replica.kill()
                print(f"replica {replica.index}: {failed[0]}; starting it again")


def stop_and_count(cluster: Cluster) -> list[Counter[str]]:
    """Stops every replica cleanly; the files each one's Ray tasks ran, by node."""
    for replica in cluster.replicas:
        replica.terminate(timeout=60)
    return [files_by_node(r.log()) for r in cluster.replicas]


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replicas' environment (they inherit this one): as the cluster's nodes."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


@pytest.mark.usefixtures("ray_env")
async def test_a_batch_on_three_replicas_spreads_over_both_ray_nodes_with_single_node_chunks(
    ray_nodes: RayCluster, tmp_path: Path, settings: Settings, postgres: PostgresServer
) -> None:
    docs = small_files(FILES, FILE_BYTES)
    async with serving(replace(settings, data_dir=tmp_path / "single")) as single:
        store = await create_store(single.alice, name="single")
        ids = await upload_all(single.alice, docs)
        batch = await create_batch(single.alice, store.id, ids)
        assert (await poll_batch(single.alice, store.id, batch.id, within=120)).status == (
            B_COMPLETED
        )
        expected = stored_chunks(tmp_path / "single", store.id)

    keys, key_args = keys_args()
    async with replicas(tmp_path, postgres.url, ray_nodes, key_args) as cluster:
        alice = tenant(cluster[0], "alice", keys)
        ids = await upload_all(alice, docs)
        store = await create_store(alice, name="on-ray")
        started = time.monotonic()
        batch = await create_batch(alice, store.id, ids)
        # Watched through another replica than the one the batch was created on.
        messages = await watch_to_end(tenant(cluster[1], "alice", keys), store.id, batch.id, 0, 180)
        seconds = time.monotonic() - started
        check_stream(messages)
        assert messages[-1].file_batch.status == B_COMPLETED
        for replica in cluster.replicas:
            seen = await get_batch(tenant(replica, "alice", keys), store.id, batch.id)
            assert counts(seen.file_counts) == (0, FILES, 0, 0, FILES), (replica.index, seen)
        per_file = assert_exactly_once(postgres.url, store.id, batch.id, FILES)
        got = pg_stored_chunks(postgres.url, store.id)
        by_replica = stop_and_count(cluster)

    spread = sum(by_replica, Counter[str]())
    print(
        f"{FILES} files through 3 replicas on 2 Ray nodes in {seconds:.1f} s "
        f"({FILES / seconds:.1f} files/s), {sum(per_file.values())} chunks; by node "
        f"{dict(spread)}; by replica {[dict(c) for c in by_replica]}"
    )
    assert len(got) == len(expected) and got == expected
    assert set(spread) == {ray_nodes.head_ip, ray_nodes.worker_ip}, spread
    assert spread.total() == FILES, spread  # each file's task finished once
    for node, files in spread.items():
        assert files >= FILES / 4, (node, spread)


@pytest.mark.usefixtures("ray_env")
async def test_a_ray_node_sigkilled_mid_batch_leaves_no_file_in_progress(
    ray_nodes: RayCluster, tmp_path: Path, postgres: PostgresServer
) -> None:
    keys, key_args = keys_args()
    async with replicas(tmp_path, postgres.url, ray_nodes, key_args) as cluster:
        alice = tenant(cluster[0], "alice", keys)
        ids = await upload_all(alice, small_files(FILES, FILE_BYTES))
        store = await create_store(alice, name="node-killed")
        batch = await create_batch(alice, store.id, ids)

        def killed_past_a_fifth_with_a_task_there() -> bool:
            statuses = [s for s, _, _ in store_files(postgres.url, store.id).values()]
            if statuses.count("completed") < FILES // 5:
                return False
            if not set(ray_nodes.pids("b")) & set(local_task_pids()):
                return False  # (looked at without freezing the node: most looks end here)
            return ray_nodes.kill_node_while("b", lambda pids: bool(pids & set(local_task_pids())))

        # A fifth of the files done, and a file's task running on the worker node when it
        # is frozen and killed.
        await until("a task on the worker node", killed_past_a_fifth_with_a_task_there, 120, 0.01)
        killed = time.monotonic()
        rows = await asyncio.to_thread(store_files, postgres.url, store.id)
        done_then = [s for s, _, _ in rows.values()].count("completed")
        print(f"\nSIGKILLed the worker node with {done_then}/{FILES} files completed")

        done = await poll_batch(tenant(cluster[2], "alice", keys), store.id, batch.id, 240)
        print(f"the batch completed {time.monotonic() - killed:.1f} s after the kill")
        assert done.status == B_COMPLETED
        assert counts(done.file_counts) == (0, FILES, 0, 0, FILES), done
        rows = await asyncio.to_thread(store_files, postgres.url, store.id)
        assert {s for s, _, _ in rows.values()} == {"completed"}, "a file stayed in progress"
        assert_exactly_once(postgres.url, store.id, batch.id, FILES)
        lost = sum(r.log().count("lost (") for r in cluster.replicas)
        by_replica = stop_and_count(cluster)

    spread = sum(by_replica, Counter[str]())
    print(f"{lost} Ray tasks lost with the node and run again; files by node {dict(spread)}")
    assert lost >= 1, "no task was lost with the node: it was killed too late"
    assert spread.total() == FILES, spread  # each file's task finished once
    # Not asserted: that the worker node had finished files of this batch before the kill.
    # With small files it often had not (its first worker for the replica's Ray job was
    # still starting while the head ran the first fifth); the task it was running is lost.
