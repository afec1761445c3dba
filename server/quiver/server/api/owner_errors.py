"""An owner replica's error status (a forwarded search's answer) as the core error it was
raised from, so an edge other than gRPC (the HTTP one) answers it as it would its own: the
class from the status code, the reason from ErrorInfo, the fields from BadRequest and the
missing resources from ResourceInfo."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from quiver.server.api.forwarding import STATUS_DETAILS, OwnerError
from quiver.server.core import errors

_CLASSES: dict[grpc.StatusCode, type[errors.QuiverError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}


def _details(trailers: tuple[Any, ...]) -> list[Any]:
    for key, value in trailers:
        if key == STATUS_DETAILS and isinstance(value, bytes):
            return list(status_pb2.Status.FromString(value).details)
    return []


def core_error_of(exc: OwnerError) -> errors.QuiverError:
    """The core error the owner's status stands for (INTERNAL-like for a status it could not
    have sent on purpose, keeping its message)."""
    reason: str | None = None
    violations: list[errors.FieldViolation] = []
    resources: list[errors.Resource] = []
    for detail in _details(exc.trailers):
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        resource = error_details_pb2.ResourceInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            reason = info.reason or None
        elif detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
            violations += [
                errors.FieldViolation(v.field, v.description) for v in bad.field_violations
            ]
        elif detail.Is(resource.DESCRIPTOR) and detail.Unpack(resource):
            resources.append(errors.Resource(resource.resource_type, resource.resource_name))
    message = exc.details or exc.code.name.lower()
    if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
        found = violations or [errors.FieldViolation("request", message)]
        error: errors.QuiverError = errors.InvalidArgument(found, reason=reason)
        error.message = message
        return error
    if exc.code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(message, reason=reason, resources=resources)
    cls = _CLASSES.get(exc.code, errors.QuiverError)
    return cls(message, reason=reason)
