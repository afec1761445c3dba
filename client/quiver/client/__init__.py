"""The Quiver Python client: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

from quiver.client import Client

with Client() as client:                      # QUIVER_TARGET, QUIVER_API_KEY
    store = client.vector_stores.create(name="docs")
    batch = client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id, files=["a.md", "b.pdf"]
    )
    hits = client.vector_stores.search(store.id, query="how are batches watched?")
"""

from quiver.client._async import AsyncClient
from quiver.client._requests import BatchFile
from quiver.client._sync import Client
from quiver.client.errors import (
    AlreadyExistsError,
    AuthenticationError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    QuiverError,
    ResourceExhaustedError,
    UnavailableError,
    UnimplementedError,
)
from quiver.client.types import (
    BatchUpdate,
    ChunkingStrategy,
    Deleted,
    ExpiresAfter,
    File,
    FileBatch,
    FileCounts,
    FileUpdate,
    LastError,
    SearchResponse,
    SearchResult,
    VectorStore,
    VectorStoreFile,
)

__all__ = [
    "AlreadyExistsError",
    "AsyncClient",
    "AuthenticationError",
    "BatchFile",
    "BatchUpdate",
    "CancelledError",
    "ChunkingStrategy",
    "Client",
    "DeadlineExceededError",
    "Deleted",
    "ExpiresAfter",
    "FailedPreconditionError",
    "FieldViolation",
    "File",
    "FileBatch",
    "FileCounts",
    "FileUpdate",
    "InternalServerError",
    "InvalidArgumentError",
    "LastError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuiverError",
    "ResourceExhaustedError",
    "SearchResponse",
    "SearchResult",
    "UnavailableError",
    "UnimplementedError",
    "VectorStore",
    "VectorStoreFile",
]
