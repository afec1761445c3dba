"""Issue 15, item 2, with three ``quiver serve`` replicas on one PostgreSQL database and a
shared ``--blobs`` directory: one replica is SIGKILLed while it holds leased files in
progress; the others finish the batch once those leases expire. Every file is completed
exactly once (no duplicate chunk, chunk indexes 0…n-1, the same chunks as a run without
faults), the batch's final sequence equals the number of file transitions recorded, and a
late commit under the dead claim is refused: end to end (a replica SIGSTOPped mid-file, its
lease taken over, then SIGCONTed, drops its result) and at the repository (a chunk slice
written with the old generation raises NotWanted)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from quiver.server.storage.postgres.storage import PostgresStorage
from quiver.server.storage.rows import NotWanted, Owner

from tests.support.batch_helpers import create_batch, create_store, poll_batch, upload_all
from tests.support.cluster import Cluster, ClusterReplica, shared_blobs
from tests.support.cluster_common import keys_args, small_files, tenant, until
from tests.support.cluster_db import (
    assert_exactly_once,
    check_chunks,
    held_leases,
    pid_of,
    store_files,
)
from tests.support.postgres import PostgresServer
from tests.support.serve import is_serving_async

FILES = 200


def holder(cluster: Cluster, owner: str) -> ClusterReplica | None:
    pid = pid_of(owner)
    return next((r for r in cluster.live() if r.proc is not None and r.proc.pid == pid), None)


async def wait_for_holder(
    cluster: Cluster,
    url: str,
    store_id: str,
    exclude: frozenset[int] = frozenset(),
    min_completed: int = 0,
) -> tuple[ClusterReplica, str, dict[str, int]]:
    """A live replica (not in ``exclude``) holding unexpired leases on files of the store:
    it, its lease owner id, and those files with their generations; once at least
    ``min_completed`` files of the store are completed."""
    found: list[tuple[ClusterReplica, str, dict[str, int]]] = []

    def check() -> bool:
        statuses = [s for s, _, _ in store_files(url, store_id).values()]
        if statuses.count("completed") < min_completed:
            return False
        by_owner: dict[str, dict[str, int]] = {}
        for file_id, (owner, generation) in held_leases(url, store_id).items():
            replica = holder(cluster, owner)
            if replica is not None and replica.index not in exclude:
                by_owner.setdefault(owner, {})[file_id] = generation
        if not by_owner:
            return False
        owner = max(by_owner, key=lambda o: len(by_owner[o]))
        replica = holder(cluster, owner)
        assert replica is not None
        found.append((replica, owner, by_owner[owner]))
        return True

    await until("a replica holding leased files in progress", check, within=120, every=0.02)
    return found[-1]


async def test_sigkill_a_replica_mid_batch(tmp_path: Path, postgres: PostgresServer) -> None:
    keys, key_args = keys_args()
    cluster = Cluster(
        tmp_path / "cluster", 3, database=postgres.url, extra=[*key_args, *shared_blobs(tmp_path)]
    )
    await cluster.start()
    try:
        alice = tenant(cluster[0], "alice", keys)
        docs = small_files(FILES)
        ids = await upload_all(alice, docs)
        store = await create_store(alice, name="failover")
        batch = await create_batch(alice, store.id, ids)

        victim, victim_id, held = await wait_for_holder(
            cluster, postgres.url, store.id, min_completed=FILES // 5
        )
        cluster.kill(victim.index)
        killed = time.monotonic()
        # Those it had not settled before it died (it may finish one between the look and
        # the kill) are left for the others, under its claim.
        rows = await asyncio.to_thread(store_files, postgres.url, store.id)
        held = {f: g for f, g in held.items() if rows[f] == ("in_progress", g, victim_id)}
        assert held, "the victim settled every file it held before it was killed"
        print(
            f"\nSIGKILLed replica {victim.index} holding {len(held)} leased files, "
            f"{FILES - len(held)} settled or held by others"
        )

        survivor = tenant(cluster.live()[0], "alice", keys)
        done = await poll_batch(survivor, store.id, batch.id, within=150)
        print(f"the batch completed {time.monotonic() - killed:.1f} s after the kill")
        assert done.file_counts.completed == FILES and done.file_counts.in_progress == 0

        per_file = assert_exactly_once(postgres.url, store.id, batch.id, FILES)
        rows = store_files(postgres.url, store.id)
        for file_id, generation in held.items():
            status, now, owner = rows[file_id]
            # Taken over: claimed again (a newer generation) by another replica.
            assert status == "completed" and now > generation, (file_id, generation, now)
            assert owner != victim_id

        # The same chunks as a run without faults: the same files again into a fresh store,
        # nothing killed.
        reference = await create_store(survivor, name="reference")
        again = await create_batch(survivor, reference.id, ids)
        await poll_batch(survivor, reference.id, again.id, within=150)
        expected = assert_exactly_once(postgres.url, reference.id, again.id, FILES)
        assert sorted(per_file.values()) == sorted(expected.values())
        assert check_chunks(postgres.url, store.id).texts == (
            check_chunks(postgres.url, reference.id).texts
        )
    except BaseException:
        print(cluster.logs()[-20000:])
        raise
    finally:
        await cluster.close()


async def test_a_late_commit_of_a_superseded_claim_is_refused(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """A replica SIGSTOPped while it holds leased files loses them (its lease expires,
    another replica claims them with a newer generation); SIGCONTed, it finishes its work
    late and its commit is refused: it logs the drop, and nothing is duplicated."""
    keys, key_args = keys_args()
    cluster = Cluster(
        tmp_path / "cluster", 3, database=postgres.url, extra=[*key_args, *shared_blobs(tmp_path)]
    )
    await cluster.start()
    try:
        files = FILES // 2
        # The batch is created on replica 2 (the attach claims its files for it), the test
        # watches the outcome through replica 0.
        alice = tenant(cluster[0], "alice", keys)
        ids = await upload_all(alice, small_files(files))
        store = await create_store(alice, name="fence")
        batch = await create_batch(tenant(cluster[2], "alice", keys), store.id, ids)

        frozen, frozen_id, held = await wait_for_holder(
            cluster, postgres.url, store.id, exclude=frozenset({0}), min_completed=files // 5
        )
        assert frozen.proc is not None
        os.killpg(frozen.proc.pid, signal.SIGSTOP)
        try:
            rows = await asyncio.to_thread(store_files, postgres.url, store.id)
            taken = [f for f in held if rows[f] == ("in_progress", held[f], frozen_id)]
            assert taken, "the frozen replica settled every file it held before it stopped"

            def taken_over() -> bool:
                rows = store_files(postgres.url, store.id)
                return all(rows[f][1] > held[f] and rows[f][2] != frozen_id for f in taken)

            # A file whose row the frozen replica holds locked (stopped inside a transaction)
            # is claimable once PostgreSQL ends that session (idle in transaction, 15 s).
            await until("another replica claiming the frozen replica's files", taken_over, 90)
            done = await poll_batch(alice, store.id, batch.id, within=150)
            assert done.file_counts.completed == files
        finally:
            os.killpg(frozen.proc.pid, signal.SIGCONT)

        # The thawed replica's late work is refused, whichever point it was stopped at: its
        # in-flight result finds its claim superseded ("was claimed again"); stopped inside
        # a transaction, PostgreSQL had ended that session and the retry finds the file
        # settled; its queued files are found no longer its own before they run. Whichever
        # it was, the database shows nothing of it.
        assert await is_serving_async(frozen.target, timeout=30)
        await asyncio.sleep(5)  # its renewals, sweeps and retries (2 s) have run meanwhile
        seen = [
            m
            for m in ("was claimed again", "database unavailable while processing")
            if m in frozen.log()
        ]
        print(f"\nthe thawed replica's late work was refused (its log: {seen or 'silent'})")
        assert_exactly_once(postgres.url, store.id, batch.id, files)
        rows = await asyncio.to_thread(store_files, postgres.url, store.id)
        for file_id in taken:
            status, generation, owner = rows[file_id]
            assert status == "completed" and generation > held[file_id] and owner != frozen_id

        # At the repository: a chunk slice under a superseded generation is refused.
        storage = PostgresStorage(postgres.url)
        try:
            rows = store_files(postgres.url, store.id)
            file_id = taken[0]
            _, generation, _ = rows[file_id]
            # Even were the file in progress again (re-attached), the old claim stays fenced.
            stale = Owner(store.id, file_id, held[file_id], batch.id, "alice", "")
            assert held[file_id] < generation
            with pytest.raises(NotWanted):
                storage.chunks.insert_slice(
                    stale, ["late"], [1], np.zeros((1, 4), dtype=np.float32), 0, 1
                )
        finally:
            storage.close()
        assert_exactly_once(postgres.url, store.id, batch.id, files)
    except BaseException:
        print(cluster.logs()[-20000:])
        raise
    finally:
        await cluster.close()
