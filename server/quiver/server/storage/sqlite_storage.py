"""The embedded default: every repository on one SQLite database (``Database``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quiver.server.storage.batch_rows import BatchRows
from quiver.server.storage.chunk_rows import ChunkRows
from quiver.server.storage.database import Database
from quiver.server.storage.file_rows import FileRows
from quiver.server.storage.index_sync_rows import IndexSyncRows
from quiver.server.storage.jobs import JobsRepository
from quiver.server.storage.replica_rows import ReplicaRows
from quiver.server.storage.rows import Tx
from quiver.server.storage.store_file_rows import StoreFileRows
from quiver.server.storage.vector_store_rows import VectorStoreRows


class SqliteStorage:
    """``Database`` with its repositories (a ``storage.interfaces.Storage``)."""

    def __init__(self, path: Path) -> None:
        self.database = Database(path)
        db = self.database
        self.files = FileRows(db)
        self.stores = VectorStoreRows(db)
        self.store_files = StoreFileRows(db)
        self.batches = BatchRows(db)
        self.chunks = ChunkRows(db)
        self.jobs = JobsRepository(db)
        self.replicas = ReplicaRows(db)
        self.index_sync = IndexSyncRows(db)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.database.transaction() as conn:
            yield conn

    def checkpoint(self) -> None:
        self.database.checkpoint()

    def close(self) -> None:
        self.database.close()
