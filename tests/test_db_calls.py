"""core/db_calls.py: database calls on bounded threads, loop steps handed back in order."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from quiver.server.core.db_calls import DbCalls, check_db_calls
from quiver.server.core.errors import ResourceExhausted
from quiver.server.core.scheduler import Job, Scheduler
from quiver.server.storage.rows import StorageUnavailable


async def test_calls_beyond_threads_and_queue_are_refused_naming_the_flags() -> None:
    calls = DbCalls(threads=1, queue=1)
    gate = threading.Event()
    try:
        running = asyncio.ensure_future(calls.run(gate.wait, 10))
        waiting = asyncio.ensure_future(calls.run(gate.wait, 10))
        await asyncio.sleep(0.05)
        assert calls.waiting == 2
        with pytest.raises(StorageUnavailable) as refused:
            await calls.run(gate.wait, 10)
        assert "--database-threads" in str(refused.value)
        assert "--database-queue" in str(refused.value)
        gate.set()
        assert await running and await waiting
        assert calls.waiting == 0
        assert await calls.run(lambda: 7) == 7  # room again
    finally:
        gate.set()
        calls.close()


async def test_a_cancelled_caller_s_body_stays_counted_until_it_ends() -> None:
    """Callers that give up (a deadline) do not free the room their bodies still hold: the
    bound keeps refusing while the stuck bodies run, and a body cancelled before it started
    frees its room at once."""
    calls = DbCalls(threads=1, queue=1)
    gate = threading.Event()
    try:
        running = asyncio.ensure_future(calls.run(gate.wait, 10))
        waiting = asyncio.ensure_future(calls.run(gate.wait, 10))
        await asyncio.sleep(0.05)
        running.cancel()
        await asyncio.sleep(0.05)
        assert calls.waiting == 2  # its body still holds the only thread
        with pytest.raises(StorageUnavailable):
            await calls.run(gate.wait, 10)
        waiting.cancel()  # not started: dropped from the queue
        await asyncio.sleep(0.05)
        assert calls.waiting == 1
        gate.set()
        for _ in range(100):
            if calls.waiting == 0:
                break
            await asyncio.sleep(0.01)
        assert calls.waiting == 0
    finally:
        gate.set()
        calls.close()


async def test_a_body_runs_off_the_loop_and_its_loop_steps_run_in_order_before_the_caller() -> None:
    calls = DbCalls(threads=2, queue=0)
    loop_thread = threading.get_ident()
    seen: list[tuple[str, bool]] = []

    def step(name: str) -> None:
        seen.append((name, threading.get_ident() == loop_thread))

    def body() -> str:
        seen.append(("body", threading.get_ident() == loop_thread))
        for i in range(3):
            calls.on_loop(step, f"step{i}")
        return "done"

    try:
        assert await calls.run(body) == "done"
        assert seen == [("body", False), ("step0", True), ("step1", True), ("step2", True)]
    finally:
        calls.close()


async def test_loop_steps_run_even_when_the_caller_was_cancelled() -> None:
    calls = DbCalls(threads=1, queue=0)
    gate = threading.Event()
    stepped = asyncio.Event()

    def body() -> None:
        gate.wait(10)
        calls.on_loop(stepped.set)

    try:
        caller = asyncio.ensure_future(calls.run(body))
        await asyncio.sleep(0.05)
        caller.cancel()
        gate.set()
        await asyncio.wait_for(stepped.wait(), 5)
    finally:
        gate.set()
        calls.close()


async def test_ask_loop_answers_from_the_loop_and_passes_its_errors() -> None:
    calls = DbCalls(threads=1, queue=0)

    def on_loop() -> int:
        return threading.get_ident()

    def refuse() -> None:
        raise ValueError("no room")

    def body() -> int:
        with pytest.raises(ValueError, match="no room"):
            calls.ask_loop(refuse)
        return calls.ask_loop(on_loop)

    try:
        assert await calls.run(body) == threading.get_ident()
    finally:
        calls.close()


def test_bad_settings_are_named() -> None:
    assert check_db_calls(4, 1024) == []
    problems = check_db_calls(0, -1)
    assert any("--database-threads" in p for p in problems)
    assert any("--database-queue" in p for p in problems)


async def test_room_reserved_for_a_request_on_a_database_thread_counts_until_queued() -> None:
    """A request checks the queue's room on the loop before its transaction (on a database
    thread) and queues its jobs after it: meanwhile the room stays taken, so concurrent
    requests cannot overfill the queue."""
    scheduler = Scheduler(max_in_flight=1, max_queued=3, max_queued_per_tenant=3)
    scheduler.reserve("t", 2)
    with pytest.raises(ResourceExhausted):
        scheduler.reserve("u", 2)
    scheduler.reserve("u", 1)
    scheduler.unreserve("t", 2)
    scheduler.enqueue([Job("vs", f"f{i}", 1, "q", "t") for i in range(2)])
    with pytest.raises(ResourceExhausted):
        scheduler.check_room("t", 1)  # 2 queued + 1 reserved
    scheduler.unreserve("u", 1)
    scheduler.check_room("t", 1)


async def test_a_body_waiting_for_the_loop_at_close_is_answered_unavailable() -> None:
    """``close`` runs on the loop's thread and blocks it until the running bodies end: a
    body asking the loop meanwhile gets UNAVAILABLE instead of a shutdown that never ends."""
    calls = DbCalls(threads=1, queue=0)
    started = threading.Event()
    outcome: list[str] = []

    def body() -> None:
        started.set()
        time.sleep(0.2)  # the loop is inside close() by now
        try:
            calls.ask_loop(lambda: "answered")
            outcome.append("answered")
        except StorageUnavailable as exc:
            outcome.append(str(exc))

    caller = asyncio.ensure_future(calls.run(body))
    await asyncio.to_thread(started.wait, 5)
    calls.close()  # blocks this (the loop's) thread until body ends
    assert outcome == ["the server is stopping"]
    await caller
