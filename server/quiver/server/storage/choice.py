"""Which storage ``--database`` selects: empty, the SQLite file in the data directory (the
embedded default); ``postgresql://...``, PostgreSQL (the ``[postgres]`` extra)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from quiver.server.config import check_database
from quiver.server.storage.interfaces import Storage
from quiver.server.storage.rows import StorageUnavailable
from quiver.server.storage.sqlite_storage import SqliteStorage


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def open_storage(database: str, data_dir: Path) -> Storage:
    """ValueError for a URL that cannot work, a missing extra, or a PostgreSQL server that
    cannot be reached (within a few seconds) or refuses the connection."""
    problem = check_database(database)
    if problem is not None:
        raise ValueError(problem)
    if not is_postgres(database):
        return SqliteStorage(data_dir / "quiver.sqlite3")
    try:
        from quiver.server.storage.postgres.storage import PostgresStorage
    except ImportError as exc:
        raise ValueError(
            f"--database {database.split('://')[0]}://... needs the PostgreSQL extra: "
            f"pip install 'quiver-vectorstore[postgres]' ({exc})"
        ) from None
    try:
        return PostgresStorage(database)
    except StorageUnavailable as exc:  # at start: a setting to fix, or a server to start
        raise ValueError(f"--database: {exc}") from None


Wake = Callable[[set[str] | None], Awaitable[None]]


def change_listener(storage: Storage) -> Callable[[Wake], Coroutine[Any, Any, None]] | None:
    """How this server hears of batch changes other servers commit (LISTEN/NOTIFY with a
    poll, for PostgreSQL); None when no other server shares the database (SQLite)."""
    if isinstance(storage, SqliteStorage):
        return None
    from quiver.server.storage.postgres.notifications import listen
    from quiver.server.storage.postgres.storage import PostgresStorage

    if not isinstance(storage, PostgresStorage):
        return None
    url = storage.url

    async def run(wake: Wake) -> None:
        await listen(url, wake)

    return run
