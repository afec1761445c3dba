"""The repositories the core reads and writes the database through, as ``typing.Protocol``s:
one per aggregate. The SQLite implementations (the embedded default) are the modules beside
this one (``file_rows.py``, ``vector_store_rows.py``, ``store_file_rows.py``,
``batch_rows.py``, ``chunk_rows.py``); another database implements the same Protocols. The
keyword index is not in the database: it is a cache built from ``ChunkRepository`` rows
(``index/keyword_manager.py``).

Methods taking a ``Tx`` run inside that open transaction (from ``Database.transaction()``);
the others read (or, ``touch``, write) on their own. Every method may block: the core calls
them from threads (``core/db_calls.py``), never on the event loop, so a transaction belongs
to the thread that opened it and may be opened on any thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from quiver.server.core.models import (
    AttributeValue,
    BatchStatus,
    Chunking,
    FileStatus,
    LastError,
    StoredFile,
    VectorStoreFile,
)
from quiver.server.storage.jobs import ClaimedFile, Lease
from quiver.server.storage.pagination import PageSpec, Rows
from quiver.server.storage.rows import (
    Attachment,
    BatchFileChange,
    BatchRow,
    ChunkHit,
    ChunkState,
    Owner,
    ReplicaRow,
    StoreActivity,
    StoreRow,
    Tx,
)

__all__ = [
    "BatchRepository",
    "ChunkRepository",
    "ChunksInCommit",
    "FileRepository",
    "IndexSyncRepository",
    "JobRepository",
    "ReplicaRepository",
    "Storage",
    "StoreFileRepository",
    "Transactions",
    "Tx",
    "VectorStoreRepository",
]


class Transactions(Protocol):
    """What the core needs of the database itself (today's ``Database``): a write
    transaction to pass to the repositories, and a checkpoint after a large commit."""

    def transaction(self) -> AbstractContextManager[Tx]: ...

    def checkpoint(self) -> None: ...


class FileRepository(Protocol):
    def insert(self, tx: Tx, tenant: str, subject: str, file: StoredFile) -> None: ...

    def get(self, file_id: str, tenant: str, subject: str) -> StoredFile | None: ...

    def page(self, tenant: str, subject: str, purpose: str, page: PageSpec) -> Rows[StoredFile]: ...

    def delete(self, tx: Tx, file_id: str) -> None: ...

    def content_in_use(self, tx: Tx, sha256: str) -> bool: ...

    def existing(self, tenant: str, subject: str, file_ids: list[str]) -> set[str]: ...


class VectorStoreRepository(Protocol):
    def get(self, store_id: str, tenant: str, subject: str) -> StoreRow | None: ...

    def get_in(self, tx: Tx, store_id: str) -> StoreRow | None: ...

    def page(self, tenant: str, subject: str, page: PageSpec) -> Rows[StoreRow]: ...

    def with_file(self, tx: Tx, file_id: str, tenant: str, subject: str) -> list[StoreRow]: ...

    def dimensioned(self) -> list[tuple[str, int]]: ...

    def absent(self, store_ids: Sequence[str]) -> list[str]:
        """Those of ``store_ids`` that have no row (deleted, by any server)."""
        ...

    def activity(self, store_id: str) -> StoreActivity | None: ...

    def dimensions(self, tx: Tx, store_id: str) -> int: ...

    def set_dimensions(self, tx: Tx, store_id: str, width: int) -> None: ...

    def touch(self, store_id: str, now: int) -> None: ...

    def insert(self, tx: Tx, store: StoreRow) -> None: ...

    def set_name(self, tx: Tx, store_id: str, name: str) -> None: ...

    def set_metadata(self, tx: Tx, store_id: str, metadata: dict[str, str]) -> None: ...

    def set_expiry(self, tx: Tx, store_id: str, anchor: str | None, days: int | None) -> None: ...

    def delete(self, tx: Tx, store_id: str) -> None: ...


class StoreFileRepository(Protocol):
    def get(self, store_id: str, file_id: str) -> VectorStoreFile | None: ...

    def attachment(self, tx: Tx, store_id: str, file_id: str) -> Attachment | None: ...

    def attach(
        self,
        tx: Tx,
        store_id: str,
        file_id: str,
        tenant: str,
        subject: str,
        now: int,
        chunking: Chunking,
        attributes: Mapping[str, AttributeValue],
        batch_id: str | None,
    ) -> int: ...

    def page(
        self, store_id: str, status: FileStatus | None, page: PageSpec
    ) -> Rows[VectorStoreFile]: ...

    def status_counts(self, store_id: str) -> list[tuple[str, int, int]]: ...

    def set_attributes(
        self, tx: Tx, store_id: str, file_id: str, attributes: Mapping[str, AttributeValue]
    ) -> None: ...

    def set_status(
        self,
        tx: Tx,
        store_id: str,
        file_id: str,
        status: FileStatus,
        error: LastError | None,
        usage_bytes: int,
    ) -> str | None: ...

    def mark_committed(self, tx: Tx, store_id: str, file_id: str) -> int:
        """Inside a file's completing transaction, last: raises the store's commit sequence
        (``vector_stores.commit_seq``, under the store row's lock until commit, so commit
        order is sequence order) and stamps the file with it (``vector_store_files.
        commit_seq``), for the index catch-up (``IndexSyncRepository.committed_after``);
        returns the new value."""
        ...

    def delete(self, tx: Tx, store_id: str, file_id: str) -> None: ...

    def in_progress(self, tx: Tx, store_id: str) -> list[str]: ...

    def completed_attributes(
        self, store_id: str, file_ids: list[str] | None = None
    ) -> list[tuple[str, dict[str, AttributeValue]]]: ...


class BatchRepository(Protocol):
    def by_request(self, tenant: str, subject: str, request_id: str) -> BatchRow | None: ...

    def get(self, batch_id: str) -> BatchRow | None: ...

    def get_in_store(self, batch_id: str, store_id: str) -> BatchRow | None: ...

    def insert(
        self,
        tx: Tx,
        batch_id: str,
        store_id: str,
        tenant: str,
        subject: str,
        now: int,
        request_id: str | None,
        digest: str | None,
    ) -> None: ...

    def in_progress(self, tx: Tx, store_id: str) -> list[str]: ...

    def request_cancel(self, tx: Tx, batch_id: str) -> bool:
        """Marks an in-progress batch as asked to cancel; False if it has ended."""
        ...

    def cancel_requested(self, tx: Tx, batch_id: str) -> bool: ...

    def next_sequence(self, tx: Tx, batch_id: str) -> int | None: ...

    def settle(self, tx: Tx, batch_id: str) -> None: ...

    def end(self, tx: Tx, batch_id: str, status: BatchStatus) -> int | None: ...

    def add_files(self, tx: Tx, batch_id: str, file_ids: list[str]) -> None: ...

    def file_status(self, tx: Tx, batch_id: str, file_id: str) -> str | None: ...

    def set_file(
        self,
        tx: Tx,
        batch_id: str,
        file_id: str,
        status: FileStatus,
        error: LastError | None,
        sequence: int,
    ) -> None: ...

    def fail_unfinished(
        self, tx: Tx, batch_id: str, error: LastError, sequence: int
    ) -> list[str]: ...

    def in_progress_files(self, tx: Tx, batch_id: str) -> list[str]: ...

    def status_counts(self, batch_id: str) -> dict[str, int]: ...

    def changes_after(self, batch_id: str, after_sequence: int) -> list[BatchFileChange]: ...

    def sequenced_changes(
        self, batch_id: str, after_sequence: int, upto: int
    ) -> list[tuple[int, BatchFileChange]]: ...

    def files_page(
        self, batch_id: str, status: FileStatus | None, page: PageSpec
    ) -> Rows[VectorStoreFile]: ...


class ChunksInCommit(Protocol):
    """A file's chunk rows written inside its completing transaction (PostgreSQL): ids
    reserved first (the vectors are added to the index under them meanwhile), then every row
    inserted in the transaction that checks the lease, flips the file to ``completed`` and
    raises the counts and sequences; if it fails, none of them remains."""

    def reserve_ids(self, count: int) -> npt.NDArray[np.int64]: ...

    def insert_reserved(
        self,
        tx: Tx,
        owner: Owner,
        ids: npt.NDArray[np.int64],
        texts: list[str],
        token_counts: list[int],
        vectors: npt.NDArray[np.float32],
    ) -> None: ...

    def delete_reserved(self, tx: Tx, ids: npt.NDArray[np.int64]) -> None:
        """Inside ``tx``: the rows ``insert_reserved`` wrote there, deleted again (the file
        is not completed after all, but the transaction commits, e.g. cancelled)."""
        ...


class ChunkRepository(Protocol):
    def in_commit(self) -> ChunksInCommit | None:
        """This database's way of writing a file's chunks in its completing transaction, or
        None when they are written in slices of their own before it (``insert_slice``:
        SQLite, whose single write lock one long transaction would hold)."""
        ...

    def insert_slice(
        self,
        owner: Owner,
        texts: list[str],
        token_counts: list[int],
        vectors: npt.NDArray[np.float32],
        start: int,
        end: int,
    ) -> npt.NDArray[np.int64]:
        """Chunks ``start:end`` in a short transaction of their own, if the job is still
        wanted (else ``NotWanted``): committed before the file completes, hidden until then
        (search and the index catch-up read completed files' chunks only); what a failed
        attempt leaves is deleted by ``delete_leftovers_slice``."""
        ...

    def delete_slice(self, ids: list[int]) -> None: ...

    def delete_leftovers_slice(self, owner: Owner, rows: int) -> list[int] | None: ...

    def delete_of_slice(self, store_id: str, file_id: str | None, rows: int) -> int: ...

    def delete_of_file(self, tx: Tx, store_id: str, file_id: str) -> list[int]: ...

    def texts_from(self, store_id: str, file_id: str, start: int) -> Iterator[tuple[int, str]]: ...

    def ids_of_files(self, store_id: str, file_ids: list[str]) -> list[int]: ...

    def ids_by_file(
        self, store_id: str, file_ids: list[str] | None = None
    ) -> dict[str, list[int]]: ...

    def vectors_from_thread(self, ids: Sequence[int]) -> list[tuple[int, bytes]]: ...

    def stores_deleted_from_thread(self) -> list[str]: ...

    def settled_with_chunks(self) -> list[tuple[str, str]]:
        """(store, file) of cancelled or failed files that still have chunk rows."""
        ...

    def ids_of_store(self, store_id: str) -> npt.NDArray[np.int64]: ...

    def completed_ids(self, store_id: str) -> npt.NDArray[np.int64]: ...

    def keyword_rows(self, ids: Sequence[int]) -> list[tuple[int, str, str]]: ...

    def vectors(self, ids: Sequence[int]) -> dict[int, bytes]: ...

    def hits(self, store_id: str, ids: Sequence[int]) -> dict[int, ChunkHit]: ...


class ReplicaRepository(Protocol):
    """The ``replicas`` table: membership by heartbeat (blocking: from a thread).

    ``storage/replica_rows.py`` is the SQLite one. Times are unix seconds of the calling
    replica's clock (replicas' clocks are assumed synchronised, e.g. by NTP, to well within
    the live window)."""

    def beat(self, replica_id: str, address: str, now: float) -> None: ...

    def live(self, since: float) -> list[ReplicaRow]: ...

    def leave(self, replica_id: str) -> None: ...

    def forget_before(self, before: float) -> int: ...


class IndexSyncRepository(Protocol):
    """What a store's vector index must hold (blocking: from a thread);
    ``storage/index_sync_rows.py`` is the SQLite one.

    A catch-up reads by the store's commit sequence: each file's completing transaction
    raises it (``StoreFileRepository.mark_committed``) in commit order, so the files
    completed since a value seen are exactly those ``committed_after`` it; a full reconcile
    reads ``commit_counter`` first, then every chunk (``chunks_after``)."""

    def chunks_after(self, store_id: str, after: int, limit: int) -> list[ChunkState]:
        """The store's first ``limit`` chunk ids above ``after``, ascending, each with
        whether its file is completed (the full reconcile's scan)."""
        ...

    def commit_counter(self, store_id: str) -> int: ...

    def committed_after(self, store_id: str, after: int, limit: int) -> list[tuple[str, int]]:
        """Completed files with a commit sequence above ``after``: (file id, sequence),
        ascending."""
        ...

    def chunks_of_files(self, store_id: str, file_ids: list[str]) -> list[tuple[int, str]]: ...

    def file_states(self, store_id: str) -> list[tuple[str, str, str]]: ...

    def files_digest(self, store_id: str) -> str: ...

    def vectors(self, ids: list[int]) -> dict[int, bytes]: ...


class JobRepository(Protocol):
    """The leased job queue (``storage/jobs.py``): owner, lease expiry, generation fence."""

    def current(self, store_id: str, file_id: str) -> dict[str, Any] | None: ...

    def stamp(self, tx: Tx, store_id: str, file_id: str, owner: str, expires_at: float) -> None: ...

    def lease(self, tx: Tx | None, store_id: str, file_id: str) -> Lease | None: ...

    def expired_in_cancelled_batches(self, tx: Tx, now: float) -> list[tuple[str, str]]: ...

    def claim_expired(
        self, tx: Tx, owner: str, now: float, expires_at: float, limit: int
    ) -> list[ClaimedFile]: ...

    def renew(self, owner: str, expires_at: float) -> int: ...

    def release(self, tx: Tx, owner: str) -> int: ...


class Storage(Transactions, Protocol):
    """One database (SQLite, or PostgreSQL with ``--database postgresql://...``): its
    transactions and every repository on it."""

    @property
    def files(self) -> FileRepository: ...

    @property
    def stores(self) -> VectorStoreRepository: ...

    @property
    def store_files(self) -> StoreFileRepository: ...

    @property
    def batches(self) -> BatchRepository: ...

    @property
    def chunks(self) -> ChunkRepository: ...

    @property
    def jobs(self) -> JobRepository: ...

    @property
    def replicas(self) -> ReplicaRepository: ...

    @property
    def index_sync(self) -> IndexSyncRepository: ...

    def close(self) -> None: ...
