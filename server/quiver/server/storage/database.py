"""SQLite in WAL mode: each thread's connection (the event loop's, the database threads' of
``core/db_calls.py``), and the sliced writes and reads of threads.

SQLite has one writer at a time. Every write, from the event loop's connection or from a
thread's, holds ``write_lock`` for the whole transaction, so writers queue on it instead of
sleeping in SQLite's busy handler. ``transaction()`` and ``execute()`` work from any thread:
each thread has its own connection and its own open transaction (the one that opened the
database uses the first connection, ``conn``). Long writes run in threads as a series of short
transactions (``slice()``), so the event loop never waits for the lock longer than one slice.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quiver.server.storage.rows import StorageError
from quiver.server.storage.schema import (
    ADDED_COLUMNS,
    ADDED_INDEXES,
    DROPPED,
    SCHEMA,
    SCHEMA_VERSION,
)
from quiver.server.storage.write_lock import WriteLock

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")

DatabaseError = sqlite3.Error
"""What a failed statement of this database raises (for the core's ``except``)."""


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full" (SQLITE_FULL) or an OS write's ENOSPC."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_outage(exc: BaseException) -> bool:
    """A fault that passes by itself: a full disk, or a networked database unreachable or
    restarting. A periodic write that meets one tries again at its next beat; worth a
    warning, not a traceback."""
    return is_disk_full(exc) or isinstance(exc, StorageError)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, cached_statements=256
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a process crash (SIGKILL); only a power cut
    # can lose the last transactions, never corrupt the database.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Database:
    """Owns the connections. ``transaction()`` groups the event loop's writes; reads may run
    outside one. Threads write with ``slice()`` and read with ``reader()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._main = _connect(path)
        self._main_thread = threading.get_ident()
        self.write_lock = WriteLock()
        self._local = threading.local()  # per thread: its connections and transaction depth
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # A checkpoint runs on a thread's connection outside the write lock: close() must not
        # close that connection under it (SQLite crashes the process).
        self._checkpoint_lock = threading.Lock()
        self._closed = False
        self._migrate()

    @property
    def conn(self) -> sqlite3.Connection:
        """The calling thread's connection for ``transaction()`` and ``execute()``."""
        if threading.get_ident() == self._main_thread:
            return self._main
        return self._thread_connection("session", query_only=False)

    @property
    def _depth(self) -> int:
        """The calling thread's transaction nesting (0: none open)."""
        return int(getattr(self._local, "depth", 0))

    @_depth.setter
    def _depth(self, value: int) -> None:
        self._local.depth = value

    def _migrate(self) -> None:
        self.conn.executescript(SCHEMA)
        for table, column, definition in ADDED_COLUMNS:
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        for statement in ADDED_INDEXES:
            self.conn.execute(statement)
        for statement in DROPPED:
            self.conn.execute(statement)
        with self.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT on the calling thread's connection, rolled back on error,
        under ``write_lock`` (urgent: before the sliced writes' next slice). Nested calls on
        the same thread join the outer one."""
        conn = self.conn
        if self._depth:
            self._depth += 1
            try:
                yield conn
            finally:
                self._depth -= 1
            return
        self.write_lock.acquire(urgent=True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
            except BaseException:
                self._depth = 0
                conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # e.g. disk full: SQLite left it open
                    conn.execute("ROLLBACK")
                raise
        finally:
            self.write_lock.release()

    def execute(
        self, sql: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> sqlite3.Cursor:
        """A statement on the calling thread's connection; a write outside a transaction
        becomes a transaction of its own (so it, too, holds the write lock)."""
        if not self._depth and sql.lstrip()[:7].upper().startswith(_WRITES):
            with self.transaction() as conn:
                return conn.execute(sql, params)
        return self.conn.execute(sql, params)

    # -- threads ---------------------------------------------------------------------------

    def _thread_connection(self, name: str, query_only: bool) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is None:
            conn = _connect(self.path)
            if query_only:
                conn.execute("PRAGMA query_only=1")
            setattr(self._local, name, conn)
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def reader(self) -> sqlite3.Connection:
        """A read-only connection for the calling thread (WAL: readers never wait on the
        writer), so slow reads can run off the event loop."""
        return self._thread_connection("reader", query_only=True)

    @contextmanager
    def slice(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction from a thread (never the event loop's): keep it to a
        few milliseconds, since the event loop's writes wait for it."""
        conn = self._thread_connection("writer", query_only=False)
        self.write_lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            self.write_lock.release()

    def checkpoint(self) -> None:
        """Copies the write-ahead log into the database (PASSIVE: never waits for anyone);
        from a thread, so the event loop's commits need not do it. Skipped once closed."""
        with self._checkpoint_lock:
            if self._closed:
                return
            self._thread_connection("writer", query_only=False).execute(
                "PRAGMA wal_checkpoint(PASSIVE)"
            )

    def close(self) -> None:
        """Closes every connection; waits for a thread's write slice in progress (a slice
        started afterwards fails with "closed database" instead of writing) and for a
        checkpoint in progress (one started afterwards does nothing)."""
        with self._checkpoint_lock:
            self._closed = True
        self.write_lock.acquire(urgent=True)
        try:
            with self._connections_lock:
                for conn in self._connections:
                    conn.close()
                self._connections.clear()
            try:
                self._main.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:
                pass  # e.g. a full disk: the WAL is kept and checkpointed at the next start
            finally:
                self._main.close()
        finally:
            self.write_lock.release()
