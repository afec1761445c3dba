"""Errors the core raises. The API edge turns each into a gRPC status (see api/errors.py)."""

from __future__ import annotations

from dataclasses import dataclass

from quiver.server.storage.database import is_disk_full
from quiver.server.storage.rows import StorageUnavailable


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (e.g. ``metadata["k"]``) and what is wrong."""

    field: str
    description: str


class QuiverError(Exception):
    """Base of every error the core raises on purpose. ``reason`` is a stable UPPER_SNAKE code."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(QuiverError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one violation")
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(message, reason=reason)
        self.violations = violations

    @classmethod
    def one(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


@dataclass(frozen=True)
class Resource:
    """A resource a NOT_FOUND error names: its type (e.g. ``file``) and id."""

    type: str
    name: str


class NotFound(QuiverError):
    reason = "NOT_FOUND"

    def __init__(
        self, message: str, *, reason: str | None = None, resources: list[Resource] | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.resources = resources or []


class FailedPrecondition(QuiverError):
    reason = "FAILED_PRECONDITION"


class AlreadyExists(QuiverError):
    reason = "ALREADY_EXISTS"


class ResourceExhausted(QuiverError):
    reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(QuiverError):
    reason = "UNAUTHENTICATED"


class Unavailable(QuiverError):
    reason = "UNAVAILABLE"


class DeadlineExceeded(QuiverError):
    reason = "DEADLINE_EXCEEDED"


class DataLoss(QuiverError):
    """Stored bytes are missing or damaged (they no longer match their checksum)."""

    reason = "DATA_LOSS"


def disk_full(exc: BaseException) -> ResourceExhausted | None:
    """RESOURCE_EXHAUSTED for an error caused by a full disk (SQLite's SQLITE_FULL "database or
    disk is full", or OSError ENOSPC/EDQUOT, anywhere in its cause or context), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if is_disk_full(current):
            return ResourceExhausted(
                "the disk holding the server's data directory is full "
                f"({current}); retry once an operator has freed space",
                reason="DISK_FULL",
            )
        current = current.__cause__ or current.__context__
    return None


def database_unavailable(exc: BaseException) -> Unavailable | None:
    """UNAVAILABLE for an error caused by a networked database that cannot be reached (down,
    restarting, too slow: ``StorageUnavailable`` in its cause or context), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageUnavailable):
            return Unavailable(
                f"the server's database is unavailable ({current}); retry shortly",
                reason="DATABASE_UNAVAILABLE",
            )
        current = current.__cause__ or current.__context__
    return None
