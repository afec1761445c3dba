"""Database calls off the event loop: the seam every async core operation goes through.

``await calls.run(body, *args)`` runs a synchronous body (repository calls, a transaction)
on a bounded pool of threads (``--database-threads``, sized to the connection pool), so a
slow or stuck database (PostgreSQL stalling or restarting, SQLite's write lock held) never
stalls the event loop: health checks, watchers and calls that need no database still answer.
At most ``--database-queue`` calls wait for a thread; more fail at once with UNAVAILABLE.

A body that must change state owned by the event loop (the scheduler's queue, the watch hub,
the index removals) hands that step to the loop with ``on_loop`` (in order, and before the
awaiting caller resumes, even if the caller was cancelled meanwhile) or, for a check whose
answer it needs (``ask_loop``), waits for the loop's answer. Called on the loop's own thread
(a body run directly, e.g. by a synchronous test), both simply call the function.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from quiver.server.storage.rows import StorageUnavailable

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_THREADS = 4
"""Threads running database calls (at most the connection pool's size is useful)."""
MAX_THREADS = 8
"""PostgreSQL's pool holds 10 connections per server, shared with the ingest's slices, the
heartbeats and the index catch-up: with as many database threads as connections, completions
holding a connection while they wait for the status book's lock could leave its holder none."""
DEFAULT_QUEUE = 1024
"""Database calls that may wait for a thread before new ones are refused (UNAVAILABLE)."""


def check_db_calls(threads: int, queue: int) -> list[str]:
    """Problems with ``--database-threads`` / ``--database-queue`` (empty when fine)."""
    problems = []
    if not 1 <= threads <= MAX_THREADS:
        problems.append(
            f"--database-threads must be between 1 and {MAX_THREADS} (PostgreSQL's pool of 10 "
            f"connections is shared with the ingest and the heartbeats), got {threads}"
        )
    if not 0 <= queue <= 1_000_000:
        problems.append(f"--database-queue must be between 0 and 1000000, got {queue}")
    return problems


class DbCalls:
    def __init__(self, threads: int = DEFAULT_THREADS, queue: int = DEFAULT_QUEUE) -> None:
        self.threads = threads
        self.queue = queue
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="quiver-db"
        )
        self._admitted = 0  # running or waiting (only the loop's thread changes it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closing = False
        self._asks: set[concurrent.futures.Future[Any]] = set()  # waiting for the loop
        self._asks_lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Calls admitted and not finished (running or waiting for a thread)."""
        return self._admitted

    async def run(self, body: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``body(*args, **kwargs)`` on a database thread (with the caller's context vars).
        Cancelling the caller does not stop a body that started: it finishes (its
        transaction commits or rolls back whole, its ``on_loop`` steps run)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._loop_thread = loop, threading.get_ident()
        if self._admitted >= self.threads + self.queue:
            raise StorageUnavailable(
                f"{self._admitted} database calls are running or waiting, the server's "
                f"limit (--database-threads {self.threads} + --database-queue {self.queue}); "
                "the database is slow or unreachable: retry shortly"
            )
        self._admitted += 1
        context = contextvars.copy_context()
        call = functools.partial(context.run, body, *args, **kwargs)
        try:
            running = self._executor.submit(call)
        except BaseException:
            self._admitted -= 1
            raise
        # Counted until the body itself ends (or is dropped before it started), not until
        # the caller stops waiting: a cancelled caller's body still holds its thread.
        running.add_done_callback(functools.partial(self._done, loop))
        return await asyncio.wrap_future(running, loop=loop)

    def _done(self, loop: asyncio.AbstractEventLoop, _: object) -> None:
        if self._on_loop_thread():
            self._admitted -= 1
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody counts any more
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self._admitted -= 1

    def _on_loop_thread(self) -> bool:
        return self._loop is None or threading.get_ident() == self._loop_thread

    def on_loop(self, step: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Runs ``step`` on the event loop: now when called there, else soon (in the order
        of the calls, before the caller of ``run`` resumes)."""
        loop = self._loop
        if loop is None or self._on_loop_thread() or loop.is_closed():
            step(*args, **kwargs)
            return
        loop.call_soon_threadsafe(functools.partial(step, *args, **kwargs))

    def ask_loop(self, check: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``check``'s answer (or its exception), computed on the event loop; from a
        database thread it waits for the loop (never call it holding a lock the loop may
        wait for, such as inside a transaction)."""
        loop = self._loop
        if loop is None or self._on_loop_thread() or loop.is_closed():
            return check(*args, **kwargs)
        answer: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._asks_lock:
            if self._closing:
                raise StorageUnavailable("the server is stopping")
            self._asks.add(answer)

        def ask() -> None:
            if answer.done():  # given up at close
                return
            try:
                _settle(answer, check(*args, **kwargs))
            except BaseException as exc:
                _settle(answer, exc)

        try:
            loop.call_soon_threadsafe(ask)
            return answer.result()
        finally:
            with self._asks_lock:
                self._asks.discard(answer)

    def close(self) -> None:
        """Waits for the calls running; later ones are refused. Called on the loop's thread,
        which then runs nothing else: a body waiting for the loop's answer (``ask_loop``)
        gets UNAVAILABLE instead of waiting for ever."""
        with self._asks_lock:
            self._closing = True
            waiting = list(self._asks)
        for answer in waiting:
            _settle(answer, StorageUnavailable("the server is stopping"))
        self._executor.shutdown(wait=True, cancel_futures=True)


def _settle(answer: concurrent.futures.Future[Any], outcome: object) -> None:
    """Gives ``answer`` its result (an exception raised by it), unless it has one already."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if isinstance(outcome, BaseException):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)
