"""Errors the core raises. The API edge turns each into a gRPC status (see api/errors.py)."""

from __future__ import annotations

from dataclasses import dataclass


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


class NotFound(QuiverError):
    reason = "NOT_FOUND"


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
