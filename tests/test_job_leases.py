"""The durable job queue: a file in progress is leased to one server instance (owner, expiry,
generation). A start or the periodic sweep claims only expired (or never claimed) leases; a
result whose claim was superseded is refused without touching the row."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from grpc import aio
from quiver.server.app import ConfigError, QuiverServer
from quiver.server.config import Settings
from quiver.server.core.job_leases import JobLeases
from quiver.server.storage.jobs import JobsRepository
from quiver.v1 import vector_stores_pb2

from tests.support.batch_helpers import (
    F_COMPLETED,
    F_IN_PROGRESS,
    chunk_rows,
    create_store,
    get_file,
    index_matches_chunks,
    poll_file,
    prose,
    upload_all,
)
from tests.support.inproc import Running, Tenant, _tenant, keyed
from tests.support.rpc_helpers import wait_for
from tests.test_watch_limits import HeldEndpoint


def lease_rows(data_dir: Path, store_id: str) -> dict[str, tuple[str, str | None, float, int]]:
    """file id → (status, lease owner, lease expiry, generation)."""
    db = sqlite3.connect(f"file:{data_dir / 'quiver.sqlite3'}?mode=ro", uri=True)
    try:
        return {
            r[0]: (r[1], r[2], float(r[3]), int(r[4]))
            for r in db.execute(
                "SELECT file_id, status, lease_owner, lease_expires_at, generation "
                "FROM vector_store_files WHERE vector_store_id = ?",
                (store_id,),
            )
        }
    finally:
        db.close()


def set_lease(
    data_dir: Path, store_id: str, file_id: str, owner: str | None, expires_at: float
) -> None:
    """What another server instance's claim looks like: the file back in progress, leased."""
    db = sqlite3.connect(data_dir / "quiver.sqlite3", timeout=10)
    try:
        with db:
            db.execute(
                "UPDATE vector_store_files SET status = 'in_progress', usage_bytes = 0, "
                "lease_owner = ?, lease_expires_at = ? WHERE vector_store_id = ? AND file_id = ?",
                (owner, expires_at, store_id, file_id),
            )
    finally:
        db.close()


async def attach(tenant: Tenant, store_id: str, file_id: str) -> None:
    await tenant.stores.CreateVectorStoreFile(
        vector_stores_pb2.CreateVectorStoreFileRequest(vector_store_id=store_id, file_id=file_id),
        metadata=tenant.metadata,
    )


@pytest.mark.parametrize("overrides", [{"job_renew_seconds": 0.2}])
async def test_only_expired_or_unclaimed_leases_are_taken_up(running: Running) -> None:
    a = running.alice
    data_dir = running.server.settings.data_dir
    store = await create_store(a)
    texts = [prose(i, 3_000) for i in range(3)]
    expired, held, unclaimed = await upload_all(
        a, [(f"l{i}.txt", t.encode()) for i, t in enumerate(texts)]
    )
    for file_id in (expired, held, unclaimed):
        await attach(a, store.id, file_id)
        assert (await poll_file(a, store.id, file_id)).status == F_COMPLETED
    mine = running.server.core.leases.owner
    assert {r[1] for r in lease_rows(data_dir, store.id).values()} == {mine}
    await running.server.stop(grace=1)

    # Another server instance died holding `expired`, another one holds `held` for an
    # hour yet, and `unclaimed` was never claimed (e.g. a row from before leases existed).
    now = time.time()
    set_lease(data_dir, store.id, expired, "dead-server", now - 5)
    set_lease(data_dir, store.id, held, "live-server", now + 3600)
    set_lease(data_dir, store.id, unclaimed, None, 0)
    before = lease_rows(data_dir, store.id)

    again = QuiverServer(running.server.settings)
    await again.start()
    channel = aio.insecure_channel(f"127.0.0.1:{again.port}")
    try:
        alice = _tenant("alice", a.key, channel)
        for file_id in (expired, unclaimed):
            assert (await poll_file(alice, store.id, file_id)).status == F_COMPLETED
        rows = lease_rows(data_dir, store.id)
        for file_id in (expired, unclaimed):
            assert rows[file_id][1] == again.core.leases.owner
            assert rows[file_id][3] == before[file_id][3] + 1  # the claim bumped it
        # `held` is left to its owner, through several sweeps.
        for _ in range(5):
            await asyncio.sleep(0.25)
            assert lease_rows(data_dir, store.id)[held] == before[held]
            assert (await get_file(alice, store.id, held)).status == F_IN_PROGRESS

        # Its owner stops renewing: once the lease expires, the sweep takes the file up.
        set_lease(data_dir, store.id, held, "live-server", time.time() - 1)
        assert (await poll_file(alice, store.id, held, within=30)).status == F_COMPLETED
        row = lease_rows(data_dir, store.id)[held]
        assert row[1] == again.core.leases.owner and row[3] == before[held][3] + 1
        rows_per_file = chunk_rows(data_dir, store.id)
        assert set(rows_per_file) == {expired, held, unclaimed}
    finally:
        await channel.close(None)
        await again.stop(grace=1)
    # `held`'s earlier chunks, in the index since the start's reconciliation, went with the
    # rows the sweep deleted: the index saved at the stop holds exactly the chunks stored.
    assert index_matches_chunks(data_dir, store.id) == ([], [])


async def test_a_data_directory_from_before_leases_is_migrated_and_taken_up(
    running: Running,
) -> None:
    a = running.alice
    data_dir = running.server.settings.data_dir
    store = await create_store(a)
    (file_id,) = await upload_all(a, [("old.txt", prose(3, 3_000).encode())])
    await attach(a, store.id, file_id)
    assert (await poll_file(a, store.id, file_id)).status == F_COMPLETED
    stored = chunk_rows(data_dir, store.id)
    await running.server.stop(grace=1)
    # The shape of a data directory written before leases existed, its file in progress.
    db = sqlite3.connect(data_dir / "quiver.sqlite3")
    try:
        with db:
            db.execute("DROP INDEX vector_store_files_by_lease_expiry")
            db.execute("DROP INDEX vector_store_files_by_lease_owner")
            db.execute("ALTER TABLE vector_store_files DROP COLUMN lease_owner")
            db.execute("ALTER TABLE vector_store_files DROP COLUMN lease_expires_at")
            db.execute("UPDATE vector_store_files SET status = 'in_progress', usage_bytes = 0")
    finally:
        db.close()

    again = QuiverServer(running.server.settings)
    await again.start()
    channel = aio.insecure_channel(f"127.0.0.1:{again.port}")
    try:
        alice = _tenant("alice", a.key, channel)
        assert (await poll_file(alice, store.id, file_id)).status == F_COMPLETED
        status, owner, _, _ = lease_rows(data_dir, store.id)[file_id]
        assert (status, owner) == ("completed", again.core.leases.owner)
        assert chunk_rows(data_dir, store.id) == stored  # processed again, once
    finally:
        await channel.close(None)
        await again.stop(grace=1)


@pytest.fixture
def held_endpoint() -> Iterator[HeldEndpoint]:
    endpoint = HeldEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


async def test_a_result_whose_claim_was_superseded_is_refused(
    settings: Settings, held_endpoint: HeldEndpoint
) -> None:
    cfg, keys = keyed(replace(settings, openai_base_url=held_endpoint.base_url, ingest_workers=1))
    server = QuiverServer(cfg)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        a = _tenant("alice", keys["alice"], channel)
        store = await create_store(a, embedding_model="openai:m", embedding_dimensions=8)
        (file_id,) = await upload_all(a, [("stale.txt", prose(7, 20_000).encode())])
        await attach(a, store.id, file_id)
        await wait_for(lambda: server.core.scheduler.in_flight == 1, within=10)
        data_dir = cfg.data_dir
        claimed = lease_rows(data_dir, store.id)[file_id]
        assert claimed[0] == "in_progress" and claimed[1] == server.core.leases.owner

        # While the worker embeds, another worker claims the file: its clock is past this
        # server's lease (as if the heartbeat had stalled), so the claim bumps the generation.
        other = JobLeases(
            JobsRepository(server.core.db), "other-server", 30, clock=lambda: time.time() + 120
        )
        with server.core.db.transaction() as conn:
            (job,) = other.claim_expired(conn, 10)
        assert job.generation == claimed[3] + 1
        superseded = lease_rows(data_dir, store.id)[file_id]

        held_endpoint.release.set()  # the first worker's result arrives: it is refused
        registry = server.core.metrics.registry

        def dropped() -> float:
            value = registry.get_sample_value(
                "quiver_ingest_stale_results_total", {"reason": "lease_lost"}
            )
            return value or 0.0

        await wait_for(lambda: dropped() == 1.0, within=30)
        await wait_for(lambda: server.core.scheduler.in_flight == 0, within=10)
        # The row is untouched (still the other worker's, in progress), nothing was stored.
        assert lease_rows(data_dir, store.id)[file_id] == superseded
        assert (await get_file(a, store.id, file_id)).status == F_IN_PROGRESS
        assert chunk_rows(data_dir, store.id) == {}
        assert server.core.indexes.get(store.id, 8).live_count == 0
    finally:
        await channel.close(None)
        await server.stop(grace=1)
    # A clean stop releases only this server's leases: the other worker's stays.
    assert lease_rows(cfg.data_dir, store.id)[file_id] == superseded


async def test_a_clean_stop_releases_the_leases_of_unfinished_files(
    settings: Settings, held_endpoint: HeldEndpoint
) -> None:
    cfg, keys = keyed(replace(settings, openai_base_url=held_endpoint.base_url, ingest_workers=1))
    server = QuiverServer(cfg)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        a = _tenant("alice", keys["alice"], channel)
        store = await create_store(a, embedding_model="openai:m", embedding_dimensions=8)
        ids = await upload_all(a, [(f"u{i}.txt", prose(i, 2_000).encode()) for i in range(2)])
        for file_id in ids:
            await attach(a, store.id, file_id)
        await wait_for(lambda: server.core.scheduler.in_flight == 1, within=10)
        rows = lease_rows(cfg.data_dir, store.id)
        assert all(r[1] == server.core.leases.owner and r[2] > time.time() for r in rows.values())
    finally:
        await channel.close(None)
        await server.stop(grace=0.1)
    rows = lease_rows(cfg.data_dir, store.id)
    assert {r[0] for r in rows.values()} == {"in_progress"}
    assert {r[2] for r in rows.values()} == {0.0}  # claimable by the next start at once


@pytest.mark.parametrize(
    ("lease", "renew", "flag"),
    [
        (0.0, 0.5, "--job-lease-seconds"),
        (-1.0, 0.5, "--job-lease-seconds"),
        (100_000.0, 10.0, "--job-lease-seconds"),
        (5.0, 5.0, "--job-renew-seconds"),
        (5.0, 0.0, "--job-renew-seconds"),
    ],
)
def test_lease_settings_are_validated(
    tmp_path: Path, lease: float, renew: float, flag: str
) -> None:
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        ingest_workers=1,
        job_lease_seconds=lease,
        job_renew_seconds=renew,
    )
    with pytest.raises(ConfigError, match=flag):
        QuiverServer(settings)


async def test_the_heartbeat_keeps_a_long_file_claimed(
    settings: Settings, held_endpoint: HeldEndpoint
) -> None:
    """A file in flight for several lease lengths stays this server's (renewed), is not
    claimed again by the sweep, and completes once."""
    cfg, keys = keyed(
        replace(
            settings,
            openai_base_url=held_endpoint.base_url,
            ingest_workers=1,
            job_lease_seconds=1.0,
            job_renew_seconds=0.2,
        )
    )
    server = QuiverServer(cfg)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        a = _tenant("alice", keys["alice"], channel)
        store = await create_store(a, embedding_model="openai:m", embedding_dimensions=8)
        (file_id,) = await upload_all(a, [("long.txt", prose(5, 2_000).encode())])
        await attach(a, store.id, file_id)
        await wait_for(lambda: server.core.scheduler.in_flight == 1, within=10)
        first = lease_rows(cfg.data_dir, store.id)[file_id]
        await asyncio.sleep(3.0)  # three lease lengths
        later = lease_rows(cfg.data_dir, store.id)[file_id]
        assert later[1] == server.core.leases.owner and later[3] == first[3]  # never re-claimed
        assert later[2] > first[2]  # renewed
        held_endpoint.release.set()
        assert (await poll_file(a, store.id, file_id)).status == F_COMPLETED
        assert lease_rows(cfg.data_dir, store.id)[file_id][3] == first[3]
        assert (
            server.core.metrics.registry.get_sample_value(
                "quiver_ingest_stale_results_total", {"reason": "superseded"}
            )
            is None
        )
    finally:
        await channel.close(None)
        await server.stop(grace=1)
