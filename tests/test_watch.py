"""WatchFileBatch against a real server: snapshot then changes, many watchers, a watcher
that never reads, resuming after a sequence, finished batches, other tenants."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import grpc
import pytest
from grpc import aio
from quiver.v1 import file_batches_pb2

from tests.batch_helpers import (
    B_COMPLETED,
    CHANGE,
    F_COMPLETED,
    F_FAILED,
    F_IN_PROGRESS,
    SNAPSHOT,
    TERMINAL,
    WatchCall,
    check_stream,
    counts,
    create_batch,
    create_store,
    get_batch,
    poll_batch,
    prose,
    read_message,
    read_to_end,
    start_watch,
    upload_all,
    watch_to_end,
)
from tests.conftest import Running, Tenant, _tenant
from tests.rpc_helpers import wait_for

Messages = Sequence[file_batches_pb2.WatchFileBatchResponse]


async def batch_of(
    tenant: Tenant, n: int, size: int = 400, failing: int = 0
) -> tuple[str, list[str], file_batches_pb2.FileBatch]:
    """A store, ``n`` uploaded files (the last ``failing`` of them empty) and a batch of them."""
    store = await create_store(tenant)
    docs = [(f"w{i}.txt", prose(i, size).encode()) for i in range(n - failing)]
    docs += [(f"empty{i}.txt", b"") for i in range(failing)]
    ids = await upload_all(tenant, docs)
    return store.id, ids, await create_batch(tenant, store.id, ids)


def check_one_change_per_file(messages: Messages, ids: Sequence[str]) -> None:
    """Each file changes once (in progress → settled): a watcher that read every message sees
    each settled file exactly once, every sequence step is one file, and the counts agree."""
    snapshot = messages[0]
    assert sorted(f.file_id for f in snapshot.files) == sorted(ids)
    settled = {f.file_id for f in snapshot.files if f.status != F_IN_PROGRESS}
    assert snapshot.sequence == len(settled)
    for previous, message in itertools.pairwise(messages):
        changed = [f.file_id for f in message.files]
        assert len(changed) == len(set(changed))
        assert not settled & set(changed), "a file was reported settled twice"
        settled |= set(changed)
        assert message.sequence - previous.sequence == len(changed)
        c = message.file_batch.file_counts
        assert c.completed + c.failed + c.cancelled == len(settled)
        assert c.total == len(ids)
    assert settled == set(ids)


async def test_snapshot_then_changes_then_terminal(running: Running) -> None:
    a = running.alice
    store_id, ids, batch = await batch_of(a, 24, failing=2)
    call = start_watch(a, store_id, batch.id)
    messages = await read_to_end(call)
    check_stream(messages)
    check_one_change_per_file(messages, ids)
    first, last = messages[0], messages[-1]
    assert first.type == SNAPSHOT and first.file_batch.id == batch.id
    assert first.file_batch.vector_store_id == store_id
    assert all(m.type == CHANGE for m in messages[1:])
    assert last.file_batch.status == B_COMPLETED
    assert counts(last.file_batch.file_counts) == (0, 22, 2, 0, 24)
    assert last.sequence == 24  # one change per file
    failed = {f.file_id: f for m in messages for f in m.files if f.status == F_FAILED}
    assert sorted(failed) == sorted(ids[-2:])
    assert all(f.last_error.code == "invalid_file" for f in failed.values())
    completed = [f for m in messages[1:] for f in m.files if f.status == F_COMPLETED]
    assert all(not f.HasField("last_error") for f in completed)
    got = await get_batch(a, store_id, batch.id)
    assert counts(got.file_counts) == counts(last.file_batch.file_counts)
    assert got.status == B_COMPLETED
    await wait_for(lambda: running.server.core.hub.watcher_count == 0)


async def test_five_watchers_agree(running: Running) -> None:
    a = running.alice
    store_id, ids, batch = await batch_of(a, 40, failing=3)
    results = await asyncio.gather(*(watch_to_end(a, store_id, batch.id) for _ in range(5)))
    for messages in results:
        check_stream(messages)
        check_one_change_per_file(messages, ids)
        assert messages[-1].file_batch.status == B_COMPLETED
        assert counts(messages[-1].file_batch.file_counts) == (0, 37, 3, 0, 40)
    assert len({m[-1].sequence for m in results}) == 1
    await wait_for(lambda: running.server.core.hub.watcher_count == 0)


async def test_a_watcher_that_never_reads_blocks_nothing(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    n = 200
    ids = await upload_all(a, [(f"l{i}.txt", prose(i, 300).encode()) for i in range(n)])
    # A channel with a tiny HTTP/2 window: the server can send this watcher almost nothing
    # until it reads, so its stream really is stuck on the server side.
    tight = aio.insecure_channel(
        running.target,
        options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)],
    )
    try:
        lazy_tenant = _tenant("alice", a.key, tight)
        batch = await create_batch(a, store.id, ids)
        lazy = start_watch(lazy_tenant, store.id, batch.id)
        await wait_for(lambda: running.server.core.hub.watcher_count >= 1)
        others = await asyncio.gather(*(watch_to_end(a, store.id, batch.id) for _ in range(3)))
        for messages in others:
            check_stream(messages)
            assert messages[-1].file_batch.status == B_COMPLETED
            assert counts(messages[-1].file_batch.file_counts) == (0, n, 0, 0, n)
        done = await poll_batch(a, store.id, batch.id, within=30)
        assert done.status == B_COMPLETED
        # The lazy watcher is still there, its stream waiting for the reader.
        assert running.server.core.hub.watcher_count == 1
        assert not lazy.done()

        messages = await read_to_end(lazy)
        check_stream(messages)
        check_one_change_per_file(messages, ids)
        assert messages[-1].file_batch.status == B_COMPLETED
        assert counts(messages[-1].file_batch.file_counts) == (0, n, 0, 0, n)
        assert messages[-1].sequence == max(m[-1].sequence for m in others) == n
        # What it missed came folded into few messages, not one per change.
        assert len(messages) <= 5, [len(m.files) for m in messages]
        assert len(messages) < min(len(m) for m in others)
        await wait_for(lambda: running.server.core.hub.watcher_count == 0)
    finally:
        await tight.close(None)


async def test_a_watcher_that_leaves_is_released(running: Running) -> None:
    a = running.alice
    store_id, _, batch = await batch_of(a, 30)
    call = start_watch(a, store_id, batch.id)
    first = await read_message(call)
    assert first is not None and first.type == SNAPSHOT
    assert running.server.core.hub.watcher_count == 1
    call.cancel()
    await wait_for(lambda: running.server.core.hub.watcher_count == 0)
    assert (await poll_batch(a, store_id, batch.id)).status == B_COMPLETED


@pytest.mark.parametrize("overrides", [{"ingest_workers": 1}])
async def test_resume_after_a_sequence(running: Running) -> None:
    a = running.alice
    n = 30
    store_id, ids, batch = await batch_of(a, n, size=150_000)
    first = start_watch(a, store_id, batch.id)
    seen: list[file_batches_pb2.WatchFileBatchResponse] = []
    while len(seen) < 4:
        message = await read_message(first)
        assert message is not None, "the batch ended before the test could resume"
        seen.append(message)
    assert seen[-1].file_batch.status not in TERMINAL, "the batch ran too fast for this test"
    first.cancel()
    last_seen = seen[-1].sequence
    settled_by_then = {f.file_id for m in seen for f in m.files if f.status != F_IN_PROGRESS}
    assert 0 < len(settled_by_then) < n

    # Reconnect while the batch still runs: nothing older than `last_seen` is sent again.
    resumed = await read_to_end(start_watch(a, store_id, batch.id, after_sequence=last_seen))
    assert resumed[0].type == SNAPSHOT
    assert resumed[0].sequence >= last_seen
    assert all(m.type == CHANGE for m in resumed[1:])
    sequences = [m.sequence for m in resumed]
    assert sequences == sorted(set(sequences))
    assert resumed[-1].file_batch.status == B_COMPLETED
    sent = [f.file_id for m in resumed for f in m.files]
    assert len(sent) == len(set(sent)), "a file was sent twice"
    assert set(sent) == set(ids) - settled_by_then
    assert all(f.status != F_IN_PROGRESS for m in resumed for f in m.files)

    # The same on the finished batch: one snapshot with just those files, and the end.
    after = await watch_to_end(a, store_id, batch.id, after_sequence=last_seen)
    assert len(after) == 1 and after[0].type == SNAPSHOT
    assert after[0].file_batch.status == B_COMPLETED
    assert {f.file_id for f in after[0].files} == set(ids) - settled_by_then
    assert after[0].sequence == n
    # Resuming from the very end sends the final state with no files.
    tail = await watch_to_end(a, store_id, batch.id, after_sequence=n)
    assert len(tail) == 1 and list(tail[0].files) == []
    assert counts(tail[0].file_batch.file_counts) == (0, n, 0, 0, n)


async def test_watching_a_finished_batch_sends_one_snapshot(running: Running) -> None:
    a = running.alice
    store_id, ids, batch = await batch_of(a, 6, failing=1)
    await poll_batch(a, store_id, batch.id)
    for _ in range(2):
        messages = await watch_to_end(a, store_id, batch.id, within=5)
        assert len(messages) == 1
        only = messages[0]
        assert only.type == SNAPSHOT
        assert only.file_batch.status == B_COMPLETED
        assert only.sequence == 6
        assert counts(only.file_batch.file_counts) == (0, 5, 1, 0, 6)
        assert sorted(f.file_id for f in only.files) == sorted(ids)
        statuses = {f.file_id: f.status for f in only.files}
        assert statuses[ids[-1]] == F_FAILED
        assert all(statuses[i] == F_COMPLETED for i in ids[:-1])
    assert running.server.core.hub.watcher_count == 0


async def watch_error(call: WatchCall) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as err:
        await read_to_end(call, within=5)
    return err.value


async def test_watch_of_another_tenant_is_not_found(running: Running) -> None:
    a, b = running.alice, running.bob
    store_id, _, batch = await batch_of(a, 3)
    err = await watch_error(start_watch(b, store_id, batch.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    bobs_store = await create_store(b)
    err = await watch_error(start_watch(b, bobs_store.id, batch.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert batch.id in (err.details() or "")
    err = await watch_error(start_watch(a, store_id, "vsfb_nosuchbatch0000000000000"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await watch_error(start_watch(a, store_id, ""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await poll_batch(a, store_id, batch.id)).status == B_COMPLETED
    assert running.server.core.hub.watcher_count == 0
