"""Builds protobuf requests from the client's keyword arguments (shared by sync and async)."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

from google.protobuf import field_mask_pb2, struct_pb2
from quiver.client.types import AttributeValue, ChunkingStrategy, ExpiresAfter, attributes_to_pb
from quiver.v1 import common_pb2, file_batches_pb2, files_pb2, vector_stores_pb2

PIECE = 1024 * 1024
FileInput: TypeAlias = "str | os.PathLike[str] | bytes | BinaryIO | tuple[str, bytes]"
"""A path, raw bytes, an open binary file, or (filename, bytes)."""
Attributes: TypeAlias = Mapping[str, AttributeValue]
Filter: TypeAlias = Mapping[str, Any]
"""OpenAI's shape: {"type": "eq", "key": "k", "value": v} or {"type": "and", "filters": [...]}."""

_STATUS = {
    "in_progress": common_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS,
    "completed": common_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED,
    "cancelled": common_pb2.VECTOR_STORE_FILE_STATUS_CANCELLED,
    "failed": common_pb2.VECTOR_STORE_FILE_STATUS_FAILED,
}


@dataclass(frozen=True)
class BatchFile:
    """One file of a batch with its own attributes and chunking (OpenAI's ``files`` entry)."""

    file_id: str
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


def status_filter(status: str | None) -> common_pb2.VectorStoreFileStatus.ValueType:
    if status is None:
        return common_pb2.VECTOR_STORE_FILE_STATUS_UNSPECIFIED
    if status not in _STATUS:
        raise ValueError(f"status filter must be one of {', '.join(_STATUS)}, not {status!r}")
    return _STATUS[status]


def _python_value(value: Any) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=float(value))
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    if isinstance(value, list | tuple):
        return struct_pb2.Value(
            list_value=struct_pb2.ListValue(values=[_python_value(v) for v in value])
        )
    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    raise TypeError(f"filter values must be str, number, bool or a list of them, not {value!r}")


def filter_to_pb(spec: Filter) -> vector_stores_pb2.Filter:
    out = vector_stores_pb2.Filter(type=str(spec.get("type", "")), key=str(spec.get("key", "")))
    if "value" in spec:
        out.value.CopyFrom(_python_value(spec["value"]))
    out.filters.extend(filter_to_pb(f) for f in spec.get("filters", ()))
    return out


def _chunking(strategy: ChunkingStrategy | None) -> common_pb2.ChunkingStrategy | None:
    return strategy.to_pb() if strategy is not None else None


def create_store(
    *,
    name: str,
    file_ids: Sequence[str],
    metadata: Mapping[str, str] | None,
    expires_after: ExpiresAfter | None,
    chunking_strategy: ChunkingStrategy | None,
    embedding_model: str,
    embedding_dimensions: int,
) -> vector_stores_pb2.CreateVectorStoreRequest:
    return vector_stores_pb2.CreateVectorStoreRequest(
        name=name,
        file_ids=list(file_ids),
        metadata=dict(metadata or {}),
        expires_after=vector_stores_pb2.ExpiresAfter(
            anchor=expires_after.anchor, days=expires_after.days
        )
        if expires_after
        else None,
        chunking_strategy=_chunking(chunking_strategy),
        embedding_model=embedding_model,
        embedding_dimensions=embedding_dimensions,
    )


def update_store(
    vector_store_id: str,
    *,
    name: str | None,
    metadata: Mapping[str, str] | None,
    expires_after: ExpiresAfter | None,
) -> vector_stores_pb2.UpdateVectorStoreRequest:
    request = vector_stores_pb2.UpdateVectorStoreRequest(vector_store_id=vector_store_id)
    paths: list[str] = []
    if name is not None:
        request.name = name
        paths.append("name")
    if metadata is not None:  # {} clears it
        request.metadata.update(metadata)
        paths.append("metadata")
    if expires_after is not None:
        request.expires_after.anchor = expires_after.anchor
        request.expires_after.days = expires_after.days
        paths.append("expires_after")
    request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    return request


def create_batch(
    vector_store_id: str,
    *,
    file_ids: Sequence[str] | None,
    files: Sequence[BatchFile] | None,
    attributes: Attributes | None,
    chunking_strategy: ChunkingStrategy | None,
    request_id: str | None,
) -> file_batches_pb2.CreateFileBatchRequest:
    """A request id is made up when none is given, so retrying the call is safe."""
    return file_batches_pb2.CreateFileBatchRequest(
        vector_store_id=vector_store_id,
        file_ids=list(file_ids or ()),
        attributes=attributes_to_pb(attributes) if file_ids else {},
        chunking_strategy=_chunking(chunking_strategy) if file_ids else None,
        files=[
            file_batches_pb2.FileBatchFileSpec(
                file_id=f.file_id,
                attributes=attributes_to_pb(f.attributes),
                chunking_strategy=_chunking(f.chunking_strategy),
            )
            for f in files or ()
        ],
        request_id=request_id or f"client-{uuid.uuid4()}",
    )


def search(
    vector_store_id: str,
    query: str | Sequence[str],
    *,
    max_num_results: int | None,
    filters: Filter | None,
    ranker: str | None,
    score_threshold: float | None,
    rewrite_query: bool,
) -> vector_stores_pb2.SearchVectorStoreRequest:
    return vector_stores_pb2.SearchVectorStoreRequest(
        vector_store_id=vector_store_id,
        query=[query] if isinstance(query, str) else list(query),
        max_num_results=max_num_results or 0,
        filters=filter_to_pb(filters) if filters is not None else None,
        ranking_options=vector_stores_pb2.RankingOptions(
            ranker=ranker or "", score_threshold=score_threshold or 0.0
        ),
        rewrite_query=rewrite_query,
    )


def _open(file: FileInput) -> tuple[str, BinaryIO, bool]:
    """(filename, stream, whether we opened it and must close it)."""
    if isinstance(file, tuple):
        return file[0], io.BytesIO(file[1]), True
    if isinstance(file, bytes):
        return "upload.bin", io.BytesIO(file), True
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        return path.name, path.open("rb"), True
    return Path(getattr(file, "name", "upload.bin")).name, file, False


def upload_messages(
    file: FileInput, *, filename: str | None, purpose: str
) -> Iterator[files_pb2.UploadFileRequest]:
    """The upload stream: the first message names the file (and its sha256 when the input
    can be read twice), then 1 MiB pieces.

    The file is opened here, before the call starts: a missing path raises its OSError to
    the caller instead of failing inside gRPC's request iterator (where the sync client saw
    UNKNOWN "Exception iterating requests!" and the async one asyncio.CancelledError)."""
    name, stream, owned = _open(file)
    return _upload_stream(name, stream, owned, filename=filename, purpose=purpose)


def _upload_stream(
    name: str, stream: BinaryIO, owned: bool, *, filename: str | None, purpose: str
) -> Iterator[files_pb2.UploadFileRequest]:
    try:
        digest = ""
        if stream.seekable():
            start = stream.tell()
            hasher = hashlib.sha256()
            while piece := stream.read(PIECE):
                hasher.update(piece)
            digest = hasher.hexdigest()
            stream.seek(start)
        first = files_pb2.UploadFileRequest(
            filename=filename or name, purpose=purpose, sha256=digest
        )
        first.data = stream.read(PIECE)
        yield first
        while piece := stream.read(PIECE):
            yield files_pb2.UploadFileRequest(data=piece)
    finally:
        if owned:
            stream.close()
