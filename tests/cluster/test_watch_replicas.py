"""Issue 15, items 3 and 7, with three ``quiver serve`` replicas on one PostgreSQL database
and a shared ``--blobs`` directory.

Item 3: WatchFileBatch streams on every replica see the same sequence of changes and the same
terminal message; a watcher that drops mid-batch and resumes on another replica with
``after_sequence`` is sent nothing older than it asked for.

Item 7: PostgreSQL is SIGKILLed and restarted mid-batch: the replicas reconnect, the batch
completes exactly once, and watchers resume (on any replica, from the last sequence seen)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc import aio
from quiver.v1 import file_batches_pb2

from tests.support.batch_helpers import (
    F_IN_PROGRESS,
    check_stream,
    create_batch,
    create_store,
    final_statuses,
    poll_batch,
    read_message,
    read_to_end,
    start_watch,
    upload_all,
    watch_to_end,
)
from tests.support.cluster import Cluster, shared_blobs
from tests.support.cluster_common import keys_args, small_files, tenant
from tests.support.cluster_db import BatchRecord, assert_exactly_once, batch_record
from tests.support.postgres import PostgresServer

FILES = 200

Message = file_batches_pb2.WatchFileBatchResponse


def check_against_record(messages: list[Message], record: BatchRecord, after: int = 0) -> None:
    """Each change message names exactly the files whose recorded change falls between the
    previous message's sequence and its own (the hub folds changes a watcher has not read
    yet into one message; the sequences are the database's); the snapshot names those
    changed after ``after``: nothing older than ``after`` is sent."""
    snapshot, rest = messages[0], messages[1:]
    # The snapshot reads the batch's sequence, then its files changed since ``after``: a
    # change committed in between is in both the snapshot and the next message.
    if after == 0:  # a full snapshot: every file, as it stood
        assert {f.file_id for f in snapshot.files} == set(record.changed_at)
    named = {f.file_id for f in snapshot.files if f.status != F_IN_PROGRESS}
    assert named <= {f for f, s in record.changed_at.items() if s > after}
    assert named >= {f for f, s in record.changed_at.items() if after < s <= snapshot.sequence}
    previous = snapshot.sequence
    for m in rest:
        assert m.sequence > previous > after - 1
        named = {f.file_id for f in m.files}
        assert named == {f for f, s in record.changed_at.items() if previous < s <= m.sequence}, (
            previous,
            m.sequence,
        )
        previous = m.sequence


def settled(messages: list[Message]) -> set[str]:
    return {f for f, u in final_statuses(messages).items() if u.status != F_IN_PROGRESS}


def terminal(messages: list[Message]) -> tuple[int, int, tuple[int, ...]]:
    last = messages[-1]
    c = last.file_batch.file_counts
    return (
        last.sequence,
        last.file_batch.status,
        (c.in_progress, c.completed, c.failed, c.cancelled, c.total),
    )


async def test_watchers_on_every_replica_agree_and_resume_elsewhere(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    keys, key_args = keys_args()
    cluster = Cluster(
        tmp_path / "cluster", 3, database=postgres.url, extra=[*key_args, *shared_blobs(tmp_path)]
    )
    await cluster.start()
    try:
        alice = [tenant(r, "alice", keys) for r in cluster.replicas]
        ids = await upload_all(alice[0], small_files(FILES))
        store = await create_store(alice[0], name="watched")
        batch = await create_batch(alice[1], store.id, ids)
        watchers = [
            asyncio.create_task(watch_to_end(who, store.id, batch.id, within=180)) for who in alice
        ]

        # One more watcher on replica 2 drops a third of the way in and resumes on replica 0.
        dropping = start_watch(alice[2], store.id, batch.id)
        before: list[Message] = []
        while not before or before[-1].sequence < FILES // 3:
            message = await read_message(dropping, within=60)
            assert message is not None, "the batch ended before the watcher dropped"
            before.append(message)
        dropping.cancel()
        last = before[-1].sequence
        resumed = await read_to_end(start_watch(alice[0], store.id, batch.id, last), within=180)

        streams = [await w for w in watchers]
        record = await asyncio.to_thread(batch_record, postgres.url, batch.id)
        assert record.sequence == FILES and record.status == "completed"
        for stream in streams:
            check_stream(stream)
            check_against_record(stream, record)
            assert {f: u.status for f, u in final_statuses(stream).items()} == {
                f: u.status for f, u in final_statuses(streams[0]).items()
            }
        assert len({terminal(s) for s in streams}) == 1, [terminal(s) for s in streams]
        assert terminal(streams[0])[0] == FILES

        # The resumed stream: nothing at or before ``last``, nothing missed after it.
        check_stream(resumed)
        check_against_record(resumed, record, after=last)
        assert resumed[0].sequence >= last
        assert terminal(resumed) == terminal(streams[0])
        settled_before = settled(before)
        assert settled_before | settled(resumed) == set(ids)
        assert not settled_before & settled(resumed), "sent again after the resume"
        print(
            f"\n{len(streams)} watchers, {[len(s) for s in streams]} messages each; "
            f"one dropped at sequence {last} and resumed on another replica "
            f"({len(resumed)} messages)"
        )
    except BaseException:
        print(cluster.logs()[-20000:])
        raise
    finally:
        await cluster.close()


async def resume_to_end(
    cluster: Cluster, keys: dict[str, str], store_id: str, batch_id: str, start: int
) -> tuple[list[Message], int]:
    """Watches from replica ``start`` to the end; whenever the stream fails (the database
    went away under it), resumes with ``after_sequence`` on the next replica. The messages
    of every stream in order, and how many times it resumed."""
    messages: list[Message] = []
    resumes = 0
    i = start
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 240
    while loop.time() < deadline:
        after = messages[-1].sequence if messages else 0
        call = start_watch(tenant(cluster[i], "alice", keys), store_id, batch_id, after)
        try:
            while (message := await read_message(call, within=120)) is not None:
                messages.append(message)
            if await call.code() == grpc.StatusCode.OK:
                return messages, resumes
        except aio.AioRpcError:
            pass
        resumes += 1
        i = (i + 1) % len(cluster)
        await asyncio.sleep(0.5)
    raise AssertionError("the watch never reached the batch's end")


async def test_postgres_restart_mid_batch(tmp_path: Path, postgres: PostgresServer) -> None:
    keys, key_args = keys_args()
    cluster = Cluster(
        tmp_path / "cluster", 3, database=postgres.url, extra=[*key_args, *shared_blobs(tmp_path)]
    )
    await cluster.start()
    try:
        alice = [tenant(r, "alice", keys) for r in cluster.replicas]
        ids = await upload_all(alice[0], small_files(FILES))
        store = await create_store(alice[0], name="outage")
        batch = await create_batch(alice[1], store.id, ids)
        watchers = [
            asyncio.create_task(resume_to_end(cluster, keys, store.id, batch.id, i))
            for i in range(3)
        ]
        # One more watcher, on replica 0: dropped while PostgreSQL is down, resumed on
        # replica 2 with the last sequence it saw once it is back.
        dropping = start_watch(alice[0], store.id, batch.id)
        before: list[Message] = []
        while not before or before[-1].sequence < FILES // 5:
            message = await read_message(dropping, within=120)
            assert message is not None, "the batch ended before PostgreSQL was restarted"
            before.append(message)
        postgres.kill()
        dropping.cancel()
        last = before[-1].sequence
        await asyncio.sleep(3)  # longer than a job lease: every lease has expired meanwhile
        await asyncio.to_thread(postgres.restart)
        resumed = await read_to_end(start_watch(alice[2], store.id, batch.id, last), within=180)

        done = await poll_batch(alice[2], store.id, batch.id, within=180)
        assert done.file_counts.completed == FILES
        assert_exactly_once(postgres.url, store.id, batch.id, FILES)
        record = await asyncio.to_thread(batch_record, postgres.url, batch.id)
        results = [await w for w in watchers]
        for messages, _ in results:
            # Each resumed stream starts with a snapshot: split there and check each part.
            starts = [i for i, m in enumerate(messages) if m.type == messages[0].type]
            parts = [
                messages[a:b] for a, b in zip(starts, [*starts[1:], len(messages)], strict=True)
            ]
            after = 0
            for part in parts:
                check_against_record(part, record, after=after)
                after = part[-1].sequence
            check_stream(parts[-1])
            assert terminal(messages) == (FILES, done.status, (0, FILES, 0, 0, FILES))
            assert set(final_statuses(messages)) == set(ids)
        check_stream(resumed)
        check_against_record(resumed, record, after=last)
        assert settled(before) | settled(resumed) == set(ids)
        assert not settled(before) & settled(resumed), "sent again after the resume"
        print(
            f"\nPostgreSQL restarted mid-batch; the watchers resumed {[r for _, r in results]} "
            f"times; one dropped at sequence {last} resumed on another replica"
        )
    except BaseException:
        print(cluster.logs()[-20000:])
        raise
    finally:
        await cluster.close()
