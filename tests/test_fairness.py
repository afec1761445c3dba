"""Tenants share the ingest queue fairly: round robin over tenants, then over each tenant's
batches, and each tenant has its own queue limit besides the global one."""

from __future__ import annotations

import grpc
import pytest

from tests.batch_helpers import (
    B_COMPLETED,
    create_batch,
    create_store,
    open_db,
    poll_batch,
    prose,
    upload_all,
    watch_to_end,
)
from tests.conftest import Running
from tests.rpc_helpers import error_reason, rpc_error, wait_for


def commit_order(running: Running) -> list[str]:
    """File ids in the order their chunks were committed (chunk ids only grow)."""
    db = open_db(running.server.settings.data_dir)
    try:
        rows = db.execute(
            "SELECT file_id, MIN(id) AS first FROM chunks GROUP BY file_id ORDER BY first"
        ).fetchall()
    finally:
        db.close()
    return [r[0] for r in rows]


async def occupy_the_worker(running: Running, store_id: str) -> str:
    """Alice's big file (a second or more of work) in the only worker; returns its batch."""
    a = running.alice
    (big,) = await upload_all(a, [("big.txt", prose(99, 3_000_000).encode())])
    batch = await create_batch(a, store_id, [big])
    await wait_for(lambda: running.server.core.scheduler.in_flight == 1, within=10)
    return batch.id


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_another_tenants_file_does_not_wait_for_a_backlog(running: Running) -> None:
    """Alice queues twelve one-file batches behind a slow file; Bob's one file then goes next,
    not after Alice's twelve (batch round robin alone put it thirteenth)."""
    a, b = running.alice, running.bob
    store_a = await create_store(a)
    store_b = await create_store(b)
    smalls = await upload_all(a, [(f"a{i}.txt", prose(i, 2000).encode()) for i in range(12)])
    (bobs,) = await upload_all(b, [("bob.txt", prose(50, 2000).encode())])
    big_batch = await occupy_the_worker(running, store_a.id)
    a_batches = [(await create_batch(a, store_a.id, [f])).id for f in smalls]
    assert running.server.core.scheduler.queued == 12
    b_batch = await create_batch(b, store_b.id, [bobs])
    assert (await watch_to_end(b, store_b.id, b_batch.id, within=60))[-1].file_batch.status == (
        B_COMPLETED
    )
    for batch_id in [big_batch, *a_batches]:
        assert (await poll_batch(a, store_a.id, batch_id)).status == B_COMPLETED
    order = commit_order(running)
    assert len(order) == 14
    position = order.index(bobs)
    print(f"bob's file committed at position {position} of 14 (0 is alice's big file)")
    # Bob's file goes right after the file in the worker; one more of Alice's files at most
    # (had the big file ended before Bob's batch was queued).
    assert position <= 2, order


@pytest.mark.parametrize(
    "overrides",
    [{"ingest_workers": 1, "max_queued_files": 8, "max_queued_files_per_tenant": 4}],
)
async def test_one_tenant_at_its_limit_does_not_refuse_another(running: Running) -> None:
    a, b = running.alice, running.bob
    store_a = await create_store(a)
    store_b = await create_store(b)
    a_ids = await upload_all(a, [(f"a{i}.txt", prose(i, 1000).encode()) for i in range(6)])
    b_ids = await upload_all(b, [(f"b{i}.txt", prose(i, 1000).encode()) for i in range(3)])
    await occupy_the_worker(running, store_a.id)
    await create_batch(a, store_a.id, a_ids[:4])  # alice's four queued files: her limit
    with pytest.raises(grpc.RpcError) as info:
        await create_batch(a, store_a.id, a_ids[4:5])
    err = rpc_error(info.value)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = err.details() or ""
    assert "--max-queued-files-per-tenant" in details and "4" in details, details
    assert error_reason(err) == "TENANT_INGEST_QUEUE_FULL"
    # Bob is not refused: the queue holds four files of eight.
    batch = await create_batch(b, store_b.id, b_ids)
    assert (await watch_to_end(b, store_b.id, batch.id, within=60))[-1].file_batch.status == (
        B_COMPLETED
    )
