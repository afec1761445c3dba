"""The connection pool, transactions and statements of the PostgreSQL storage.

Every call crosses a socket, so each is bounded: a connection is made within
``CONNECT_TIMEOUT`` seconds, a statement runs at most ``STATEMENT_TIMEOUT_MS``, a caller waits
at most ``POOL_TIMEOUT`` seconds for one of the pool's ``max_size`` connections. Any of those
failing, or the server being down, raises ``StorageUnavailable`` (UNAVAILABLE at the edges);
the pool replaces a broken connection and, after such a failure, checks its idle ones (in a
thread), so it reconnects by itself once the server is back. (Connections are not checked
before each loan: that round trip would double the cost of a read.) Other database errors
raise ``StorageError``.

A transaction belongs to the thread that opened it (the event loop's, or a worker thread's);
statements issued on that thread while it is open join it, as with SQLite.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import psycopg
import psycopg_pool
from psycopg.rows import DictRow, dict_row
from quiver.server.storage.rows import StorageError, StorageUnavailable, Tx

CONNECT_TIMEOUT = 3
"""Seconds to open one connection."""
STATEMENT_TIMEOUT_MS = 15_000
"""Longest statement; a longer one is cancelled (StorageUnavailable)."""
IDLE_IN_TRANSACTION_MS = 15_000
"""Longest pause inside a transaction: PostgreSQL ends the session of a server that stops
mid-transaction (SIGSTOP, a partition) after it, releasing its row locks, so the files it
held can be claimed by the others (a claim's SKIP LOCKED passes over locked rows)."""
POOL_TIMEOUT = 5.0
"""Seconds a caller waits for a free connection of the pool."""
POOL_SIZE = 10
"""Connections per server at most (the event loop, its threads and the ingest slices)."""

Conn = psycopg.Connection[DictRow]


def conn_of(tx: Tx) -> Conn:
    """The PostgreSQL connection behind a ``Tx`` of this implementation."""
    if not isinstance(tx, psycopg.Connection):
        raise TypeError(f"not a transaction of the PostgreSQL storage: {type(tx).__name__}")
    return cast(Conn, tx)


def _translated(exc: BaseException) -> BaseException:
    if isinstance(
        exc,
        psycopg.OperationalError | psycopg.InterfaceError | psycopg_pool.PoolTimeout,
    ):
        return StorageUnavailable(f"PostgreSQL unavailable: {str(exc).strip()[:300]}")
    if isinstance(exc, psycopg.Error):
        return StorageError(f"PostgreSQL error: {str(exc).strip()[:300]}")
    return exc


@contextmanager
def translated_errors() -> Iterator[None]:
    """psycopg's and the pool's errors as ``StorageUnavailable``/``StorageError``."""
    try:
        yield
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise _translated(exc) from exc


def connection_kwargs() -> dict[str, Any]:
    return {
        "autocommit": True,
        "row_factory": dict_row,
        "connect_timeout": CONNECT_TIMEOUT,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


class PgDatabase:
    """The pool, and the thread's open transaction."""

    def __init__(self, url: str, *, max_size: int = POOL_SIZE) -> None:
        self.url = url
        self.pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs=connection_kwargs(),
            timeout=POOL_TIMEOUT,
            reconnect_timeout=30,  # a replacement is retried (with backoff) for 30 s; callers
            # waiting for a connection make the pool try again after that
            open=False,
            name="quiver",
        )
        self._local = threading.local()
        self._checking = threading.Lock()
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
        except psycopg_pool.PoolTimeout as exc:
            self.pool.close()
            raise StorageUnavailable(
                f"cannot connect to the PostgreSQL database of --database within "
                f"{CONNECT_TIMEOUT * 2} s: {exc}"
            ) from exc

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """``translated_errors``; once the server is found unreachable, the pool's idle
        connections are checked (in a thread, one check at a time) so the broken ones are
        replaced before the next callers take them."""
        try:
            with translated_errors():
                yield
        except StorageUnavailable:
            if self._checking.acquire(blocking=False):
                threading.Thread(target=self._check, name="pg-pool-check", daemon=True).start()
            raise

    def _check(self) -> None:
        try:
            self.pool.check()
        except Exception:  # the pool closed meanwhile, or the server still down
            pass
        finally:
            self._checking.release()

    def _open(self) -> Conn | None:
        return cast("Conn | None", getattr(self._local, "tx", None))

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        """BEGIN … COMMIT on a pooled connection, rolled back on error. Nested calls on the
        same thread join the outer one."""
        open_tx = self._open()
        if open_tx is not None:
            yield open_tx
            return
        with self._guard(), self.pool.connection() as conn, conn.transaction():
            self._local.tx = conn
            try:
                yield conn
            finally:
                self._local.tx = None

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """The thread's open transaction's connection, or a pooled one (autocommit)."""
        open_tx = self._open()
        if open_tx is not None:
            yield open_tx
            return
        with self._guard(), self.pool.connection() as conn:
            yield conn

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[DictRow]:
        with self._guard(), self.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> DictRow | None:
        with self._guard(), self.connection() as conn:
            return conn.execute(sql, params).fetchone()

    def run(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """A write (its own transaction unless one is open on this thread); rows changed."""
        with self._guard(), self.connection() as conn:
            return conn.execute(sql, params).rowcount

    def close(self) -> None:
        self.pool.close(timeout=5)


def execute(tx: Tx, sql: str, params: tuple[Any, ...] = ()) -> psycopg.Cursor[DictRow]:
    """A statement inside ``tx``."""
    with translated_errors():
        return conn_of(tx).execute(sql, params)
