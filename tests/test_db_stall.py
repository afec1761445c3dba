"""A stuck database never stalls the event loop (core/db_calls.py).

While requests' database calls are stuck (PostgreSQL: a table locked by another session;
SQLite: the write lock held by another connection), the server's health check answers and
its event loop runs on time; once the database is free again the stuck calls complete.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quiver.server.config import Settings
from quiver.v1 import vector_stores_pb2

from tests.support.inproc import Running, serving
from tests.support.pg_fixtures import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

ANSWER_WITHIN = 0.1
"""Seconds the health check and the loop may take while the database is stuck."""
STUCK_FOR = 1.5
"""Seconds of probing while the database calls are stuck."""


def _health_latencies(target: str, stop: threading.Event, out: list[float]) -> None:
    """Health checks from a thread of its own (its clock runs on while the loop is busy)."""
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connected first
        while not stop.is_set():
            started = time.perf_counter()
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            out.append(time.perf_counter() - started)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stop.wait(0.05)


async def _loop_lags(seconds: float) -> list[float]:
    """How late a 10 ms sleep on the server's (and this test's) loop wakes, repeatedly."""
    lags = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - started - 0.01)
    return lags


async def _probe_while_stuck(
    running: Running, stuck: list[asyncio.Task[object]]
) -> tuple[list[float], list[float]]:
    health: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=_health_latencies, args=(running.target, stop, health))
    prober.start()
    try:
        lags = await _loop_lags(STUCK_FOR)
    finally:
        stop.set()
        await asyncio.to_thread(prober.join)
    _check(health, lags)
    assert not any(task.done() for task in stuck), "the database calls were not stuck"
    return health, lags


def _check(health: list[float], lags: list[float]) -> None:
    assert len(health) >= 5, health
    assert max(health) < ANSWER_WITHIN, f"health check took {max(health):.3f} s"
    assert max(lags) < ANSWER_WITHIN, f"the event loop was {max(lags):.3f} s late"


async def _stuck_calls(
    n: int, call: Callable[[int], Awaitable[object]]
) -> list[asyncio.Task[object]]:
    tasks: list[asyncio.Task[object]] = [asyncio.ensure_future(call(i)) for i in range(n)]
    await asyncio.sleep(0.3)  # they reach the database and wait there
    return tasks


async def test_a_locked_postgresql_table_does_not_stall_the_event_loop(
    tmp_path: Path, pg_url: str
) -> None:
    settings = Settings(
        listen="127.0.0.1:0",
        http_listen="off",
        data_dir=tmp_path / "data",
        ingest_workers=1,
        database=pg_url,
    )
    async with serving(settings) as running:
        alice = running.alice
        made = await alice.stores.CreateVectorStore(
            vector_stores_pb2.CreateVectorStoreRequest(name="s"), metadata=alice.metadata
        )
        get = vector_stores_pb2.GetVectorStoreRequest(vector_store_id=made.vector_store.id)
        locker: psycopg.Connection[tuple[object, ...]] = await asyncio.to_thread(
            psycopg.connect, pg_url
        )
        try:
            await asyncio.to_thread(
                locker.execute, "LOCK TABLE vector_stores IN ACCESS EXCLUSIVE MODE"
            )
            stuck = await _stuck_calls(
                4,
                lambda i: alice.stores.GetVectorStore(get, metadata=alice.metadata, timeout=30),
            )
            await _probe_while_stuck(running, stuck)
        finally:
            await asyncio.to_thread(locker.rollback)
            await asyncio.to_thread(locker.close)
        for reply in await asyncio.gather(*stuck):
            assert isinstance(reply, vector_stores_pb2.GetVectorStoreResponse)
            assert reply.vector_store.id == made.vector_store.id


async def test_a_held_sqlite_write_lock_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    settings = Settings(
        listen="127.0.0.1:0", http_listen="off", data_dir=tmp_path / "data", ingest_workers=1
    )
    async with serving(settings) as running:
        alice = running.alice
        other = sqlite3.connect(
            str(running.server.core.db.path), isolation_level=None, check_same_thread=False
        )
        try:
            other.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held by another connection
            stuck = await _stuck_calls(
                2,
                lambda i: alice.stores.CreateVectorStore(
                    vector_stores_pb2.CreateVectorStoreRequest(name=f"s{i}"),
                    metadata=alice.metadata,
                    timeout=30,
                ),
            )
            await _probe_while_stuck(running, stuck)
        finally:
            other.execute("ROLLBACK")
            other.close()
        replies = await asyncio.gather(*stuck)
        names = sorted(
            r.vector_store.name
            for r in replies
            if isinstance(r, vector_stores_pb2.CreateVectorStoreResponse)
        )
        assert names == ["s0", "s1"]
