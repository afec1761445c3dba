"""Validation of every field the design limits. Each check names the field it rejects."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from quiver.server.core.chunking_defaults import MAX_CHUNK_TOKENS, MIN_CHUNK_TOKENS
from quiver.server.core.errors import FieldViolation, InvalidArgument
from quiver.server.core.models import (
    AUTO_CHUNKING,
    AttributeValue,
    Chunking,
    ExpiresAfter,
    ListParams,
    Order,
)

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_STRING = 512
MAX_NAME = 256
MAX_FILENAME = 255
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20
MAX_EXPIRY_DAYS = 365
EXPIRY_ANCHORS = ("last_active_at",)
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


def raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)


def check_metadata(metadata: Mapping[str, str], field: str = "metadata") -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if len(metadata) > MAX_METADATA_PAIRS:
        out.append(
            FieldViolation(
                field, f"has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed"
            )
        )
    for key, value in metadata.items():
        if not key:
            out.append(FieldViolation(field, "keys must not be empty"))
        elif len(key) > MAX_METADATA_KEY:
            out.append(
                FieldViolation(
                    f"{field}[{key[:20]!r}…]",
                    f"key is {len(key)} characters; at most {MAX_METADATA_KEY} are allowed",
                )
            )
        if len(value) > MAX_METADATA_VALUE:
            out.append(
                FieldViolation(
                    f"{field}[{key[:64]!r}]",
                    f"value is {len(value)} characters; at most {MAX_METADATA_VALUE} are allowed",
                )
            )
    return out


def check_attributes(
    attributes: Mapping[str, Any], field: str = "attributes"
) -> tuple[dict[str, AttributeValue], list[FieldViolation]]:
    """Checks attribute values that the edge converted from ``google.protobuf.Value``.

    Allowed: str (≤ 512 chars), finite float, bool. ``None``, lists and dicts are rejected.
    """
    out: list[FieldViolation] = []
    clean: dict[str, AttributeValue] = {}
    if len(attributes) > MAX_ATTRIBUTES:
        out.append(
            FieldViolation(
                field, f"has {len(attributes)} keys; at most {MAX_ATTRIBUTES} are allowed"
            )
        )
        return clean, out
    for key, value in attributes.items():
        where = f"{field}[{key[:64]!r}]"
        if not key:
            out.append(FieldViolation(field, "keys must not be empty"))
            continue
        if len(key) > MAX_ATTRIBUTE_KEY:
            out.append(
                FieldViolation(
                    f"{field}[{key[:20]!r}…]",
                    f"key is {len(key)} characters; at most {MAX_ATTRIBUTE_KEY} are allowed",
                )
            )
            continue
        if isinstance(value, bool):
            clean[key] = value
        elif isinstance(value, int | float):
            if not math.isfinite(value):
                out.append(FieldViolation(where, "number must be finite (no NaN or infinity)"))
            else:
                clean[key] = float(value)
        elif isinstance(value, str):
            if len(value) > MAX_ATTRIBUTE_STRING:
                out.append(
                    FieldViolation(
                        where,
                        f"string is {len(value)} characters; "
                        f"at most {MAX_ATTRIBUTE_STRING} are allowed",
                    )
                )
            else:
                clean[key] = value
        else:
            kind = "null" if value is None else type(value).__name__
            out.append(FieldViolation(where, f"must be a string, number or boolean, not {kind}"))
    return clean, out


def check_chunking(
    kind: str,
    max_tokens: int | None,
    overlap_tokens: int | None,
    field: str = "chunking_strategy",
) -> tuple[Chunking, list[FieldViolation]]:
    """``kind`` "" or "auto" → ``AUTO_CHUNKING``; "static" needs both numbers within the limits."""
    if kind in ("", "auto"):
        if max_tokens is not None:
            return AUTO_CHUNKING, [
                FieldViolation(f"{field}.static", 'must be absent when type is "auto"')
            ]
        return AUTO_CHUNKING, []
    if kind != "static":
        return AUTO_CHUNKING, [
            FieldViolation(f"{field}.type", f'must be "auto" or "static", not {kind[:40]!r}')
        ]
    if max_tokens is None or overlap_tokens is None:
        return AUTO_CHUNKING, [
            FieldViolation(f"{field}.static", 'is required when type is "static"')
        ]
    out: list[FieldViolation] = []
    if not MIN_CHUNK_TOKENS <= max_tokens <= MAX_CHUNK_TOKENS:
        out.append(
            FieldViolation(
                f"{field}.static.max_chunk_size_tokens",
                f"must be {MIN_CHUNK_TOKENS}…{MAX_CHUNK_TOKENS}, not {max_tokens}",
            )
        )
    elif not 0 <= overlap_tokens <= max_tokens // 2:
        out.append(
            FieldViolation(
                f"{field}.static.chunk_overlap_tokens",
                f"must be 0…{max_tokens // 2} (half of max_chunk_size_tokens), "
                f"not {overlap_tokens}",
            )
        )
    return Chunking(max_tokens, overlap_tokens), out


def check_list_params(
    limit: int, order: str, after: str, before: str, *, max_limit: int = MAX_LIST_LIMIT
) -> ListParams:
    out: list[FieldViolation] = []
    if limit == 0:
        limit = DEFAULT_LIST_LIMIT
    elif not 1 <= limit <= max_limit:
        out.append(FieldViolation("limit", f"must be 1…{max_limit}, not {limit}"))
    parsed_order = Order.DESC
    if order:
        try:
            parsed_order = Order(order)
        except ValueError:
            out.append(FieldViolation("order", f'must be "asc" or "desc", not {order[:40]!r}'))
    raise_if(out)
    return ListParams(limit, parsed_order, after or None, before or None)


def check_name(name: str, field: str = "name") -> list[FieldViolation]:
    if len(name) > MAX_NAME:
        return [FieldViolation(field, f"is {len(name)} characters; at most {MAX_NAME} are allowed")]
    return []


def check_expires_after(
    anchor: str, days: int, field: str = "expires_after"
) -> tuple[ExpiresAfter, list[FieldViolation]]:
    out: list[FieldViolation] = []
    anchor = anchor or "last_active_at"
    if anchor not in EXPIRY_ANCHORS:
        out.append(
            FieldViolation(f"{field}.anchor", f'must be "last_active_at", not {anchor[:40]!r}')
        )
    if not 1 <= days <= MAX_EXPIRY_DAYS:
        out.append(FieldViolation(f"{field}.days", f"must be 1…{MAX_EXPIRY_DAYS}, not {days}"))
    return ExpiresAfter(anchor, days), out


def check_filename(filename: str, field: str = "filename") -> list[FieldViolation]:
    if not filename:
        return [FieldViolation(field, "is required in the first message")]
    if len(filename) > MAX_FILENAME:
        return [
            FieldViolation(
                field, f"is {len(filename)} characters; at most {MAX_FILENAME} are allowed"
            )
        ]
    if "/" in filename or filename in (".", ".."):
        return [FieldViolation(field, 'must not contain "/", nor be "." or ".."')]
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in filename):
        return [FieldViolation(field, "must not contain control characters (NUL, newline …)")]
    if any(0xD800 <= ord(c) <= 0xDFFF for c in filename):
        return [FieldViolation(field, "must be valid Unicode text")]
    return []


def check_purpose(purpose: str, field: str = "purpose") -> tuple[str, list[FieldViolation]]:
    if not purpose:
        return "assistants", []
    if purpose not in FILE_PURPOSES:
        return purpose, [
            FieldViolation(
                field, f"must be one of {', '.join(FILE_PURPOSES)}; not {purpose[:40]!r}"
            )
        ]
    return purpose, []


def check_id(value: str, field: str, prefix: str) -> list[FieldViolation]:
    """Presence only: a well-formed id of another prefix is simply not found later."""
    if not value:
        return [FieldViolation(field, f'is required (an id like "{prefix}…")')]
    if len(value) > 128:
        return [FieldViolation(field, "is longer than 128 characters")]
    return []


MAX_SEQUENCE = 2**63 - 1
"""Sequences and page tokens are SQLite integers (signed 64-bit)."""


def check_sequence(value: int, field: str = "after_sequence") -> int:
    """A sequence from a client (uint64 on the wire), within what the database can hold."""
    if not 0 <= value <= MAX_SEQUENCE:
        raise InvalidArgument.one(
            field, f"must be a sequence from a previous message (0…{MAX_SEQUENCE}), not {value}"
        )
    return value


def check_page_token(page: str, field: str = "page") -> int:
    """A ``next_page`` token from a previous reply: "" or a chunk position (ASCII digits)."""
    if not page:
        return 0
    if len(page) > 19 or not (page.isascii() and page.isdigit()) or int(page) > MAX_SEQUENCE:
        raise InvalidArgument.one(
            field, f"must be a next_page token from a previous reply, not {page[:40]!r}"
        )
    return int(page)
