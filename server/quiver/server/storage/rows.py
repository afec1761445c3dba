"""Plain rows the repositories hand to the core (besides ``core/models.py``'s), and the
opaque transaction handle the core passes back to them."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Protocol


class Tx(Protocol):
    """An open write transaction (from ``Database.transaction()``), opaque to the core: it
    only hands it back to a repository's methods, which then run inside it."""


def conn_of(tx: Tx) -> sqlite3.Connection:
    """The SQLite connection behind a ``Tx`` of this (the SQLite) implementation."""
    if not isinstance(tx, sqlite3.Connection):
        raise TypeError(f"not a transaction of the SQLite storage: {type(tx).__name__}")
    return tx


@dataclass(frozen=True)
class StoreRow:
    id: str
    tenant: str
    subject: str
    name: str
    created_at: int
    last_active_at: int
    expires_anchor: str | None
    expires_days: int | None
    metadata: dict[str, str]
    embedding_model: str
    embedding_dimensions: int
    dimensions_sent: bool


@dataclass(frozen=True)
class StoreActivity:
    """What a store's expiry is computed from."""

    last_active_at: int
    expires_days: int | None


@dataclass(frozen=True)
class Attachment:
    """Which batch a store file was last attached for, and its status."""

    batch_id: str | None
    status: str


@dataclass(frozen=True)
class BatchRow:
    id: str
    created_at: int
    vector_store_id: str
    status: str
    sequence: int
    request_digest: str | None


@dataclass(frozen=True)
class BatchFileChange:
    """A batch's record of one of its files."""

    file_id: str
    status: str
    last_error_code: str | None
    last_error_message: str | None


@dataclass(frozen=True)
class ChunkHit:
    """A chunk of a completed file, as a search result shows it."""

    id: int
    file_id: str
    text: str
    attributes: dict[str, str | float | bool]
    filename: str


@dataclass(frozen=True)
class Owner:
    """The store file a job writes for, and the generation that job was queued with."""

    store_id: str
    file_id: str
    generation: int
    batch_id: str | None
    tenant: str
    subject: str


class NotWanted(Exception):
    """The job's file was detached, re-attached or cancelled while its chunks were written."""


@dataclass(frozen=True)
class ReplicaRow:
    """A replica's row in ``replicas``: who, where to reach it, and its last heartbeat."""

    replica_id: str
    address: str
    heartbeat_at: float


@dataclass(frozen=True)
class ChunkState:
    """A chunk id of a store, its file, and whether that file is completed (searchable)."""

    id: int
    file_id: str
    completed: bool


class StorageError(RuntimeError):
    """A statement of a networked database (PostgreSQL) failed."""


class StorageUnavailable(StorageError):
    """The database cannot be reached (down, restarting, or too slow to answer): retry."""
