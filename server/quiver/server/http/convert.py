"""Core objects as OpenAI's JSON objects, and OpenAI's JSON request fields as core input."""

from __future__ import annotations

from typing import Any

from quiver.server.core import models
from quiver.server.core.errors import FieldViolation, InvalidArgument
from quiver.server.core.filters import RawFilter
from quiver.server.core.search import SearchHit
from quiver.server.core.validation import check_attributes, check_chunking, check_expires_after
from quiver.server.core.watch import WatchMessage
from quiver.server.http import body

Json = dict[str, Any]
MAX_FILTER_DEPTH = 64  # deeper than core/filters allows: it names the path past its own limit

# -- core → JSON -----------------------------------------------------------------------------


def file_out(file: models.StoredFile) -> Json:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
        "sha256": file.sha256,
    }


def counts_out(counts: models.FileCounts) -> Json:
    return {
        "in_progress": counts.in_progress,
        "completed": counts.completed,
        "failed": counts.failed,
        "cancelled": counts.cancelled,
        "total": counts.total,
    }


def store_out(store: models.VectorStore) -> Json:
    expires = store.expires_after
    return {
        "id": store.id,
        "object": "vector_store",
        "created_at": store.created_at,
        "name": store.name,
        "usage_bytes": store.usage_bytes,
        "file_counts": counts_out(store.file_counts),
        "status": store.status.value,
        "expires_after": None
        if expires is None
        else {"anchor": expires.anchor, "days": expires.days},
        "expires_at": store.expires_at,
        "last_active_at": store.last_active_at,
        "metadata": dict(store.metadata),
        "embedding_model": store.embedding_model,
        "embedding_dimensions": store.embedding_dimensions,
    }


def chunking_out(chunking: models.Chunking) -> Json:
    return {
        "type": "static",
        "static": {
            "max_chunk_size_tokens": chunking.max_tokens,
            "chunk_overlap_tokens": chunking.overlap_tokens,
        },
    }


def last_error_out(error: models.LastError | None) -> Json | None:
    return None if error is None else {"code": error.code, "message": error.message}


def store_file_out(file: models.VectorStoreFile) -> Json:
    return {
        "id": file.id,
        "object": "vector_store.file",
        "created_at": file.created_at,
        "vector_store_id": file.vector_store_id,
        "status": file.status.value,
        "usage_bytes": file.usage_bytes,
        "last_error": last_error_out(file.last_error),
        "chunking_strategy": chunking_out(file.chunking),
        "attributes": dict(file.attributes),
    }


def batch_out(batch: models.FileBatch) -> Json:
    return {
        "id": batch.id,
        "object": "vector_store.file_batch",
        "created_at": batch.created_at,
        "vector_store_id": batch.vector_store_id,
        "status": batch.status.value,
        "file_counts": counts_out(batch.file_counts),
    }


def hit_out(hit: SearchHit) -> Json:
    return {
        "file_id": hit.file_id,
        "filename": hit.filename,
        "score": hit.score,
        "attributes": dict(hit.attributes),
        "content": [{"type": "text", "text": hit.text}],
    }


def watch_out(message: WatchMessage) -> Json:
    """One WatchFileBatch message (the gRPC one's fields, statuses as OpenAI's strings)."""
    return {
        "sequence": message.sequence,
        "type": "snapshot" if message.snapshot else "change",
        "file_batch": batch_out(message.batch),
        "files": [
            {
                "file_id": f.file_id,
                "status": f.status.value,
                "last_error": last_error_out(f.last_error),
            }
            for f in message.files
        ],
    }


def page_out(page: models.Page[Any], data: list[Json]) -> Json:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


# -- JSON → core -----------------------------------------------------------------------------


def attributes_in(
    value: Any, field: str = "attributes"
) -> tuple[dict[str, models.AttributeValue], list[FieldViolation]]:
    if value is None:
        return {}, []
    if not isinstance(value, dict):
        return {}, [FieldViolation(field, "must be an object of strings, numbers and booleans")]
    return check_attributes(value, field)


def chunking_in(
    value: Any, field: str = "chunking_strategy"
) -> tuple[models.Chunking, list[FieldViolation]]:
    if value is None:
        return models.AUTO_CHUNKING, []
    if not isinstance(value, dict):
        return models.AUTO_CHUNKING, [FieldViolation(field, "must be an object")]
    body.only(value, ("type", "static"), field)
    kind = body.string(value, "type", where=f"{field}.type")
    static = body.obj(value, "static", where=f"{field}.static")
    if static is None:
        return check_chunking(kind, None, None, field)
    where = f"{field}.static"
    body.only(static, ("max_chunk_size_tokens", "chunk_overlap_tokens"), where)
    size = static.get("max_chunk_size_tokens")
    overlap = static.get("chunk_overlap_tokens")
    return check_chunking(
        kind,
        None
        if size is None
        else body.integer(static, "max_chunk_size_tokens", where=f"{where}.max_chunk_size_tokens"),
        None
        if overlap is None
        else body.integer(static, "chunk_overlap_tokens", where=f"{where}.chunk_overlap_tokens"),
        field,
    )


def expires_in(value: Any, field: str = "expires_after") -> models.ExpiresAfter:
    if not isinstance(value, dict):
        raise InvalidArgument.one(field, "must be an object {anchor, days}")
    body.only(value, ("anchor", "days"), field)
    expires, bad = check_expires_after(
        body.string(value, "anchor", where=f"{field}.anchor"),
        body.integer(value, "days", where=f"{field}.days"),
        field,
    )
    if bad:
        raise InvalidArgument(bad)
    return expires


def filter_in(value: Any, path: str = "filters", depth: int = 0) -> RawFilter:
    """OpenAI's flat filter object as plain data; ``parse_filter`` validates its meaning."""
    if not isinstance(value, dict):
        raise InvalidArgument.one(path, "must be a filter object")
    if depth > MAX_FILTER_DEPTH:
        raise InvalidArgument.one(path, f"nests filters more than {MAX_FILTER_DEPTH} deep")
    body.only(value, ("type", "key", "value", "filters"), path)
    children = body.array(value, "filters", where=f"{path}.filters") or []
    return RawFilter(
        type=body.string(value, "type", where=f"{path}.type"),
        key=body.string(value, "key", where=f"{path}.key"),
        value=value.get("value"),
        has_value="value" in value and value["value"] is not None,
        filters=[
            filter_in(child, f"{path}.filters[{i}]", depth + 1) for i, child in enumerate(children)
        ],
    )
