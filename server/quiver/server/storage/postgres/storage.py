"""Every repository on one PostgreSQL database (a ``storage.interfaces.Storage``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from quiver.server.storage.postgres.batch_rows import PgBatchRows
from quiver.server.storage.postgres.chunk_rows import PgChunkRows
from quiver.server.storage.postgres.connection import PgDatabase
from quiver.server.storage.postgres.file_rows import PgFileRows
from quiver.server.storage.postgres.index_sync_rows import PgIndexSyncRows
from quiver.server.storage.postgres.jobs import PgJobs
from quiver.server.storage.postgres.replica_rows import PgReplicaRows
from quiver.server.storage.postgres.schema import migrate
from quiver.server.storage.postgres.store_file_rows import PgStoreFileRows
from quiver.server.storage.postgres.vector_store_rows import PgVectorStoreRows
from quiver.server.storage.rows import Tx


class PostgresStorage:
    def __init__(self, url: str) -> None:
        self.url = url
        self.database = PgDatabase(url)
        try:
            migrate(self.database)
        except BaseException:
            self.database.close()
            raise
        db = self.database
        self.files = PgFileRows(db)
        self.stores = PgVectorStoreRows(db)
        self.store_files = PgStoreFileRows(db)
        self.batches = PgBatchRows(db)
        self.chunks = PgChunkRows(db)
        self.jobs = PgJobs(db)
        self.replicas = PgReplicaRows(db)
        self.index_sync = PgIndexSyncRows(db)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.database.transaction() as conn:
            yield conn

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints by itself."""

    def close(self) -> None:
        self.database.close()
