"""Conversions between core objects and protobuf messages, both ways."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2
from quiver.server.core import models
from quiver.server.core.errors import FieldViolation
from quiver.server.core.filters import RawFilter
from quiver.server.core.validation import check_attributes, check_chunking
from quiver.v1 import common_pb2, file_batches_pb2, files_pb2, vector_stores_pb2

_FILE_STATUS = {
    models.FileStatus.IN_PROGRESS: common_pb2.VECTOR_STORE_FILE_STATUS_IN_PROGRESS,
    models.FileStatus.COMPLETED: common_pb2.VECTOR_STORE_FILE_STATUS_COMPLETED,
    models.FileStatus.CANCELLED: common_pb2.VECTOR_STORE_FILE_STATUS_CANCELLED,
    models.FileStatus.FAILED: common_pb2.VECTOR_STORE_FILE_STATUS_FAILED,
}
_FILE_STATUS_BACK = {number: status for status, number in _FILE_STATUS.items()}
_STORE_STATUS = {
    models.StoreStatus.IN_PROGRESS: vector_stores_pb2.VECTOR_STORE_STATUS_IN_PROGRESS,
    models.StoreStatus.COMPLETED: vector_stores_pb2.VECTOR_STORE_STATUS_COMPLETED,
    models.StoreStatus.EXPIRED: vector_stores_pb2.VECTOR_STORE_STATUS_EXPIRED,
}
_BATCH_STATUS = {
    models.BatchStatus.IN_PROGRESS: file_batches_pb2.FILE_BATCH_STATUS_IN_PROGRESS,
    models.BatchStatus.COMPLETED: file_batches_pb2.FILE_BATCH_STATUS_COMPLETED,
    models.BatchStatus.CANCELLED: file_batches_pb2.FILE_BATCH_STATUS_CANCELLED,
    models.BatchStatus.FAILED: file_batches_pb2.FILE_BATCH_STATUS_FAILED,
}

# -- protobuf → core -------------------------------------------------------------------


def value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    if kind == "struct_value":
        return {k: value_to_python(v) for k, v in value.struct_value.fields.items()}
    return None


def attributes_in(
    attributes: Mapping[str, struct_pb2.Value], field: str = "attributes"
) -> tuple[dict[str, models.AttributeValue], list[FieldViolation]]:
    return check_attributes({k: value_to_python(v) for k, v in attributes.items()}, field)


def chunking_in(
    message: common_pb2.ChunkingStrategy | None, field: str = "chunking_strategy"
) -> tuple[models.Chunking, list[FieldViolation]]:
    if message is None:
        return models.AUTO_CHUNKING, []
    if message.HasField("static"):
        return check_chunking(
            message.type,
            message.static.max_chunk_size_tokens,
            message.static.chunk_overlap_tokens,
            field,
        )
    return check_chunking(message.type, None, None, field)


def filter_in(message: vector_stores_pb2.Filter) -> RawFilter:
    """The message as plain data; `parse_filter` validates it and names bad paths."""
    return RawFilter(
        type=message.type,
        key=message.key,
        value=value_to_python(message.value),
        has_value=message.HasField("value"),
        filters=[filter_in(f) for f in message.filters],
    )


def file_status_in(
    value: int, field: str = "filter"
) -> tuple[models.FileStatus | None, list[FieldViolation]]:
    if value == common_pb2.VECTOR_STORE_FILE_STATUS_UNSPECIFIED:
        return None, []
    status = _FILE_STATUS_BACK.get(value)  # type: ignore[call-overload]
    if status is None:
        return None, [FieldViolation(field, f"unknown file status number {value}")]
    return status, []


# -- core → protobuf -------------------------------------------------------------------


def python_to_value(value: models.AttributeValue) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, float | int):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=value)


def file_out(file: models.StoredFile) -> files_pb2.File:
    return files_pb2.File(
        id=file.id,
        object="file",
        bytes=file.bytes,
        created_at=file.created_at,
        filename=file.filename,
        purpose=file.purpose,
        sha256=file.sha256,
    )


def counts_out(counts: models.FileCounts) -> common_pb2.FileCounts:
    return common_pb2.FileCounts(
        in_progress=counts.in_progress,
        completed=counts.completed,
        failed=counts.failed,
        cancelled=counts.cancelled,
        total=counts.total,
    )


def store_out(store: models.VectorStore) -> vector_stores_pb2.VectorStore:
    out = vector_stores_pb2.VectorStore(
        id=store.id,
        object="vector_store",
        created_at=store.created_at,
        name=store.name,
        usage_bytes=store.usage_bytes,
        file_counts=counts_out(store.file_counts),
        status=_STORE_STATUS[store.status],
        last_active_at=store.last_active_at,
        metadata=store.metadata,
        embedding_model=store.embedding_model,
        embedding_dimensions=store.embedding_dimensions,
    )
    if store.expires_after is not None:
        out.expires_after.anchor = store.expires_after.anchor
        out.expires_after.days = store.expires_after.days
    if store.expires_at is not None:
        out.expires_at = store.expires_at
    return out


def chunking_out(chunking: models.Chunking) -> common_pb2.ChunkingStrategy:
    return common_pb2.ChunkingStrategy(
        type="static",
        static=common_pb2.StaticChunkingStrategy(
            max_chunk_size_tokens=chunking.max_tokens,
            chunk_overlap_tokens=chunking.overlap_tokens,
        ),
    )


def file_status_out(status: models.FileStatus) -> common_pb2.VectorStoreFileStatus.ValueType:
    return _FILE_STATUS[status]


def last_error_out(error: models.LastError | None) -> common_pb2.LastError | None:
    if error is None:
        return None
    return common_pb2.LastError(code=error.code, message=error.message)


def store_file_out(file: models.VectorStoreFile) -> vector_stores_pb2.VectorStoreFile:
    return vector_stores_pb2.VectorStoreFile(
        id=file.id,
        object="vector_store.file",
        created_at=file.created_at,
        vector_store_id=file.vector_store_id,
        status=_FILE_STATUS[file.status],
        usage_bytes=file.usage_bytes,
        last_error=last_error_out(file.last_error),
        chunking_strategy=chunking_out(file.chunking),
        attributes={k: python_to_value(v) for k, v in file.attributes.items()},
    )


def batch_out(batch: models.FileBatch) -> file_batches_pb2.FileBatch:
    return file_batches_pb2.FileBatch(
        id=batch.id,
        object="vector_store.file_batch",
        created_at=batch.created_at,
        vector_store_id=batch.vector_store_id,
        status=_BATCH_STATUS[batch.status],
        file_counts=counts_out(batch.file_counts),
    )


def page_fields(page: models.Page[Any], ids: list[str]) -> dict[str, Any]:
    """The list envelope shared by every List RPC: object, first_id, last_id, has_more."""
    return {
        "object": "list",
        "first_id": ids[0] if ids else "",
        "last_id": ids[-1] if ids else "",
        "has_more": page.has_more,
    }
