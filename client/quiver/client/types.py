"""What the client returns: plain dataclasses shaped like OpenAI's objects, not protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf import struct_pb2
from quiver.v1 import common_pb2, file_batches_pb2, files_pb2, vector_stores_pb2

AttributeValue = str | float | bool
FileStatus = Literal["in_progress", "completed", "cancelled", "failed"]
BatchStatus = Literal["in_progress", "completed", "cancelled", "failed"]
StoreStatus = Literal["in_progress", "completed", "expired"]


def _enum_value(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


@dataclass(frozen=True)
class FileCounts:
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0

    @classmethod
    def from_pb(cls, m: common_pb2.FileCounts) -> FileCounts:
        return cls(m.in_progress, m.completed, m.failed, m.cancelled, m.total)


@dataclass(frozen=True)
class LastError:
    code: str
    message: str

    @classmethod
    def from_pb(cls, m: common_pb2.LastError) -> LastError:
        return cls(m.code, m.message)


@dataclass(frozen=True)
class ChunkingStrategy:
    """``ChunkingStrategy()`` is auto (800/400 tokens); ``ChunkingStrategy.static(400, 100)``."""

    type: Literal["auto", "static"] = "auto"
    max_chunk_size_tokens: int = 800
    chunk_overlap_tokens: int = 400

    @classmethod
    def static(cls, max_chunk_size_tokens: int, chunk_overlap_tokens: int) -> ChunkingStrategy:
        return cls("static", max_chunk_size_tokens, chunk_overlap_tokens)

    def to_pb(self) -> common_pb2.ChunkingStrategy:
        if self.type == "auto":
            return common_pb2.ChunkingStrategy(type="auto")
        return common_pb2.ChunkingStrategy(
            type="static",
            static=common_pb2.StaticChunkingStrategy(
                max_chunk_size_tokens=self.max_chunk_size_tokens,
                chunk_overlap_tokens=self.chunk_overlap_tokens,
            ),
        )

    @classmethod
    def from_pb(cls, m: common_pb2.ChunkingStrategy) -> ChunkingStrategy:
        if m.type == "static":
            return cls.static(m.static.max_chunk_size_tokens, m.static.chunk_overlap_tokens)
        return cls()


@dataclass(frozen=True)
class File:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    sha256: str
    object: str = "file"

    @classmethod
    def from_pb(cls, m: files_pb2.File) -> File:
        return cls(m.id, m.bytes, m.created_at, m.filename, m.purpose, m.sha256)


@dataclass(frozen=True)
class ExpiresAfter:
    days: int
    anchor: str = "last_active_at"


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
    object: str = "vector_store"

    @classmethod
    def from_pb(cls, m: vector_stores_pb2.VectorStore) -> VectorStore:
        status: Any = _enum_value(
            vector_stores_pb2.VectorStoreStatus.Name(m.status), "VECTOR_STORE_STATUS_"
        )
        return cls(
            id=m.id,
            created_at=m.created_at,
            name=m.name,
            usage_bytes=m.usage_bytes,
            file_counts=FileCounts.from_pb(m.file_counts),
            status=status,
            expires_after=ExpiresAfter(m.expires_after.days, m.expires_after.anchor)
            if m.HasField("expires_after")
            else None,
            expires_at=m.expires_at if m.HasField("expires_at") else None,
            last_active_at=m.last_active_at,
            metadata=dict(m.metadata),
            embedding_model=m.embedding_model,
            embedding_dimensions=m.embedding_dimensions,
        )


def file_status(value: int) -> FileStatus:
    number: Any = value
    name: Any = _enum_value(
        common_pb2.VectorStoreFileStatus.Name(number), "VECTOR_STORE_FILE_STATUS_"
    )
    return name  # type: ignore[no-any-return]


def attributes_from_pb(values: Mapping[str, struct_pb2.Value]) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for key, value in values.items():
        kind = value.WhichOneof("kind")
        if kind == "bool_value":
            out[key] = value.bool_value
        elif kind == "number_value":
            number = value.number_value
            out[key] = int(number) if number.is_integer() else number
        elif kind == "string_value":
            out[key] = value.string_value
    return out


def attributes_to_pb(values: Mapping[str, AttributeValue] | None) -> dict[str, struct_pb2.Value]:
    out: dict[str, struct_pb2.Value] = {}
    for key, value in (values or {}).items():
        if isinstance(value, bool):
            out[key] = struct_pb2.Value(bool_value=value)
        elif isinstance(value, int | float):
            out[key] = struct_pb2.Value(number_value=float(value))
        else:
            out[key] = struct_pb2.Value(string_value=str(value))
    return out


@dataclass(frozen=True)
class VectorStoreFile:
    id: str
    created_at: int
    vector_store_id: str
    status: FileStatus
    usage_bytes: int
    last_error: LastError | None
    chunking_strategy: ChunkingStrategy
    attributes: dict[str, AttributeValue]
    object: str = "vector_store.file"

    @classmethod
    def from_pb(cls, m: vector_stores_pb2.VectorStoreFile) -> VectorStoreFile:
        return cls(
            id=m.id,
            created_at=m.created_at,
            vector_store_id=m.vector_store_id,
            status=file_status(m.status),
            usage_bytes=m.usage_bytes,
            last_error=LastError.from_pb(m.last_error) if m.HasField("last_error") else None,
            chunking_strategy=ChunkingStrategy.from_pb(m.chunking_strategy),
            attributes=attributes_from_pb(m.attributes),
        )


@dataclass(frozen=True)
class FileBatch:
    id: str
    created_at: int
    vector_store_id: str
    status: BatchStatus
    file_counts: FileCounts
    object: str = "vector_store.file_batch"

    @property
    def done(self) -> bool:
        return self.status != "in_progress"

    @classmethod
    def from_pb(cls, m: file_batches_pb2.FileBatch) -> FileBatch:
        status: Any = _enum_value(
            file_batches_pb2.FileBatchStatus.Name(m.status), "FILE_BATCH_STATUS_"
        )
        return cls(m.id, m.created_at, m.vector_store_id, status, FileCounts.from_pb(m.file_counts))


@dataclass(frozen=True)
class FileUpdate:
    file_id: str
    status: FileStatus
    last_error: LastError | None


@dataclass(frozen=True)
class BatchUpdate:
    """One WatchFileBatch message: the batch after the change, and the files that changed."""

    sequence: int
    snapshot: bool
    batch: FileBatch
    files: list[FileUpdate] = field(default_factory=list)

    @classmethod
    def from_pb(cls, m: file_batches_pb2.WatchFileBatchResponse) -> BatchUpdate:
        return cls(
            sequence=m.sequence,
            snapshot=m.type == file_batches_pb2.WATCH_EVENT_TYPE_SNAPSHOT,
            batch=FileBatch.from_pb(m.file_batch),
            files=[
                FileUpdate(
                    f.file_id,
                    file_status(f.status),
                    LastError.from_pb(f.last_error) if f.HasField("last_error") else None,
                )
                for f in m.files
            ],
        )


@dataclass(frozen=True)
class Deleted:
    id: str
    object: str
    deleted: bool


@dataclass(frozen=True)
class SearchResult:
    file_id: str
    filename: str
    score: float
    attributes: dict[str, AttributeValue]
    text: str

    @classmethod
    def from_pb(cls, m: vector_stores_pb2.SearchResult) -> SearchResult:
        return cls(
            m.file_id,
            m.filename,
            m.score,
            attributes_from_pb(m.attributes),
            "".join(part.text for part in m.content),
        )


@dataclass(frozen=True)
class SearchResponse:
    search_query: list[str]
    data: list[SearchResult]
    object: str = "vector_store.search_results.page"

    @classmethod
    def from_pb(cls, m: vector_stores_pb2.SearchVectorStoreResponse) -> SearchResponse:
        return cls(list(m.search_query), [SearchResult.from_pb(r) for r in m.data])
