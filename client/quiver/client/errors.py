"""Exceptions the client raises. Callers never see ``grpc.RpcError``.

QuiverError
├── InvalidArgumentError     (field_violations: which field, what is wrong)
├── NotFoundError
├── AlreadyExistsError
├── FailedPreconditionError
├── ResourceExhaustedError   (queue or size limits)
├── AuthenticationError      (missing or wrong API key)
├── PermissionDeniedError
├── UnavailableError         (server down, starting or draining; retried for reads)
├── DeadlineExceededError    (the call's timeout passed)
├── CancelledError
├── UnimplementedError
└── InternalServerError      (anything else the server reports)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class QuiverError(Exception):
    """A call failed. ``code`` is the gRPC status code, ``reason`` the server's ErrorInfo
    reason (e.g. ``VECTOR_STORE_EXPIRED``), ``request_id`` the id in the server's logs."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        request_id: str = "",
        field_violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.request_id = request_id
        self.field_violations = field_violations or []

    def __str__(self) -> str:
        where = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.code.name}: {self.message}{where}"


class InvalidArgumentError(QuiverError):
    pass


class NotFoundError(QuiverError):
    pass


class AlreadyExistsError(QuiverError):
    pass


class FailedPreconditionError(QuiverError):
    pass


class ResourceExhaustedError(QuiverError):
    pass


class AuthenticationError(QuiverError):
    pass


class PermissionDeniedError(QuiverError):
    pass


class UnavailableError(QuiverError):
    pass


class DeadlineExceededError(QuiverError):
    pass


class CancelledError(QuiverError):
    pass


class UnimplementedError(QuiverError):
    pass


class InternalServerError(QuiverError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[QuiverError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def from_rpc_error(error: grpc.RpcError) -> QuiverError:
    """The typed exception for a failed call, with the google.rpc details it carried."""
    call: Any = error
    code: grpc.StatusCode = call.code()
    message: str = call.details() or code.name
    reason = request_id = ""
    violations: list[FieldViolation] = []
    try:
        status = rpc_status.from_call(call)
    except (ValueError, AttributeError):
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                request_id = info.metadata.get("request_id", "")
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    cls = _BY_CODE.get(code, InternalServerError)
    return cls(
        message, code=code, reason=reason, request_id=request_id, field_violations=violations
    )
