"""Plain data objects the core works with and returns. The API edge converts them to protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from quiver.server.core.chunking_defaults import AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS

AttributeValue = str | float | bool
"""A file attribute's value: OpenAI allows strings, numbers and booleans."""


class StoreStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    EXPIRED = "expired"


class FileStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class BatchStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class FileCounts:
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.in_progress + self.completed + self.failed + self.cancelled

    @classmethod
    def from_status_counts(cls, counts: dict[str, int]) -> FileCounts:
        return cls(
            in_progress=counts.get(FileStatus.IN_PROGRESS, 0),
            completed=counts.get(FileStatus.COMPLETED, 0),
            failed=counts.get(FileStatus.FAILED, 0),
            cancelled=counts.get(FileStatus.CANCELLED, 0),
        )


@dataclass(frozen=True)
class StoredFile:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    sha256: str


@dataclass(frozen=True)
class ExpiresAfter:
    anchor: str
    days: int


@dataclass(frozen=True)
class VectorStore:
    id: str
    created_at: int
    name: str
    usage_bytes: int
    file_counts: FileCounts
    status: StoreStatus
    expires_after: ExpiresAfter | None
    expires_at: int | None
    last_active_at: int
    metadata: dict[str, str]
    embedding_model: str
    embedding_dimensions: int


@dataclass(frozen=True)
class Chunking:
    """A resolved chunking strategy: token window size and overlap (``AUTO_CHUNKING`` for auto)."""

    max_tokens: int
    overlap_tokens: int
    auto: bool = False


AUTO_CHUNKING = Chunking(AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS, auto=True)


@dataclass(frozen=True)
class LastError:
    code: str
    message: str


@dataclass(frozen=True)
class VectorStoreFile:
    id: str
    created_at: int
    vector_store_id: str
    status: FileStatus
    usage_bytes: int
    last_error: LastError | None
    chunking: Chunking
    attributes: dict[str, AttributeValue]


@dataclass(frozen=True)
class FileBatch:
    id: str
    created_at: int
    vector_store_id: str
    status: BatchStatus
    file_counts: FileCounts


class Order(StrEnum):
    ASC = "asc"
    DESC = "desc"


@dataclass(frozen=True)
class ListParams:
    """A validated OpenAI-style list request."""

    limit: int = 20
    order: Order = Order.DESC
    after: str | None = None
    before: str | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    data: list[T] = field(default_factory=list)
    has_more: bool = False
