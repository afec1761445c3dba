"""Ingest on Ray (``--ingest ray:auto``) against real servers: the same chunks and vectors as
the local pool, a file past the timeout has its task cancelled, a task whose worker process
is SIGKILLed mid-file is run again.

One local Ray for the whole session (``ray.init(num_cpus=2)`` in this process, ~10 s to
start); each server's executor finds it initialized and uses it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from quiver.server.app import ConfigError, QuiverServer  # noqa: E402
from quiver.server.config import Settings  # noqa: E402
from quiver.server.ingest.ray_executor import RayExecutor, local_task_pids  # noqa: E402

from tests.support.batch_helpers import (  # noqa: E402
    B_COMPLETED,
    F_COMPLETED,
    F_FAILED,
    Chunks,
    check_stream,
    counts,
    create_batch,
    create_store,
    duplicate_chunks,
    final_statuses,
    prose,
    static,
    stored_chunks,
    upload_all,
    watch_to_end,
)
from tests.support.inproc import Running, serving  # noqa: E402
from tests.support.rpc_helpers import wait_for  # noqa: E402


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    started = not ray.is_initialized()
    if started:
        # "local": a new Ray of its own, never one that happens to run on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def on_ray(settings: Settings, **overrides: object) -> Settings:
    changes: dict[str, object] = {"ingest": "ray:auto", "ray_tasks": 2, **overrides}
    return replace(settings, **changes)  # type: ignore[arg-type]


DOCS = [(f"doc{i}.txt", prose(i, 2_000 + 1_500 * i).encode()) for i in range(8)]


async def ingest(running: Running, docs: list[tuple[str, bytes]]) -> tuple[str, Chunks]:
    a = running.alice
    store = await create_store(a)
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids, chunking=static(120, 30))
    messages = await watch_to_end(a, store.id, batch.id, within=90)
    check_stream(messages)
    assert messages[-1].file_batch.status == B_COMPLETED
    assert counts(messages[-1].file_batch.file_counts) == (0, len(docs), 0, 0, len(docs))
    return store.id, stored_chunks(running.server.settings.data_dir, store.id)


@pytest.mark.slow
async def test_ray_gives_the_chunks_and_vectors_of_the_local_pool(
    local_ray: None, tmp_path: Path, settings: Settings
) -> None:
    local_settings = replace(settings, data_dir=tmp_path / "local")
    async with serving(local_settings) as local:
        _, expected = await ingest(local, DOCS)
    async with serving(on_ray(settings, data_dir=tmp_path / "ray")) as remote:
        assert isinstance(remote.server.core.pool, RayExecutor)
        _, got = await ingest(remote, DOCS)
        assert remote.server.core.pool.restarts == 0
    assert len(expected) > 3 * len(DOCS)  # several chunks a file
    assert got.keys() == expected.keys()
    for key, (tokens, text, vector) in expected.items():
        assert got[key] == (tokens, text, vector), key


@pytest.mark.slow
async def test_a_file_past_the_timeout_has_its_task_cancelled(
    local_ray: None, settings: Settings
) -> None:
    """The task is force-cancelled (its worker process killed) and the file fails with the
    local pool's timeout error; the small files complete."""
    async with serving(on_ray(settings, file_timeout=3.0)) as running:
        a = running.alice
        store = await create_store(a)
        huge = (prose(1, 100_000) * 300).encode()  # ~30 MB: some 20 s of work
        docs = [("huge.txt", huge)] + [(f"small{i}.txt", prose(i, 500).encode()) for i in range(4)]
        ids = await upload_all(a, docs)
        batch = await create_batch(a, store.id, ids)
        messages = await watch_to_end(a, store.id, batch.id, within=90)
        check_stream(messages)
        updates = final_statuses(messages)
        assert updates[ids[0]].status == F_FAILED
        assert updates[ids[0]].last_error.code == "invalid_file"
        assert "took longer than 3 s" in updates[ids[0]].last_error.message
        assert "--file-timeout" in updates[ids[0]].last_error.message
        for file_id in ids[1:]:
            assert updates[file_id].status == F_COMPLETED, updates[file_id].last_error
        assert counts(messages[-1].file_batch.file_counts) == (0, 4, 1, 0, 5)
        assert running.server.core.pool.restarts == 1
        # Cancelled, not left running: no Ray worker is still on a file.
        await wait_for(lambda: local_task_pids() == [], within=20)


@pytest.mark.slow
async def test_a_task_whose_worker_is_killed_runs_again_and_completes(
    local_ray: None, settings: Settings
) -> None:
    async with serving(on_ray(settings)) as running:
        a = running.alice
        store = await create_store(a)
        big = (prose(2, 100_000) * 30).encode()  # ~3 MB: a second or two of work
        (file_id,) = await upload_all(a, [("big.txt", big)])
        batch = await create_batch(a, store.id, [file_id])
        await wait_for(lambda: len(local_task_pids()) == 1, within=30)
        (victim,) = local_task_pids()
        os.kill(victim, signal.SIGKILL)
        messages = await watch_to_end(a, store.id, batch.id, within=90)
        check_stream(messages)
        update = final_statuses(messages)[file_id]
        assert update.status == F_COMPLETED, update.last_error
        assert running.server.core.pool.restarts == 1
        data_dir = running.server.settings.data_dir
        assert duplicate_chunks(data_dir) == []
        assert len(stored_chunks(data_dir, store.id)) > 100
        assert victim not in local_task_pids()


@pytest.mark.slow
async def test_the_executor_waits_for_a_slot_instead_of_submitting(
    local_ray: None, settings: Settings
) -> None:
    """Bounded in flight: with --ray-tasks 1, a second file is not submitted while the first
    runs (it waits in the server, not in Ray's queue): one Ray worker on a file at a time."""
    async with serving(on_ray(settings, ray_tasks=1)) as running:
        a = running.alice
        store = await create_store(a)
        big = (prose(3, 100_000) * 12).encode()
        ids = await upload_all(a, [("one.txt", big), ("two.txt", big)])
        batch = await create_batch(a, store.id, ids)
        seen = 0

        async def watch_pids() -> None:
            nonlocal seen
            while True:
                seen = max(seen, len(local_task_pids()))
                await asyncio.sleep(0.05)

        probe = asyncio.ensure_future(watch_pids())
        try:
            messages = await watch_to_end(a, store.id, batch.id, within=90)
        finally:
            probe.cancel()
        assert counts(messages[-1].file_batch.file_counts) == (0, 2, 0, 0, 2)
        assert seen == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ingest": "ray"}, "--ingest must be 'local', 'ray:auto' or 'ray://HOST:PORT'"),
        ({"ingest": "ray://head"}, "--ingest must be"),
        ({"ingest": "ray://head:99999"}, "--ingest must be"),
        ({"ingest": "ray:auto", "ray_tasks": 0}, "--ray-tasks must be at least 1"),
        ({"ingest": "ray:auto", "ray_task_retries": -1}, "--ray-task-retries must be 0"),
    ],
)
def test_bad_ingest_settings_stop_the_server_naming_the_flag(
    settings: Settings, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        QuiverServer(settings)
