"""Turns core errors into gRPC status with google.rpc details (BadRequest, ErrorInfo)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from quiver.server.core import errors

DOMAIN = "quiver"

# What one status may carry. A client refuses trailing metadata past 8 KiB by default (grpc's
# soft limit: some calls fail from there, every call past 16 KiB) and then sees
# RESOURCE_EXHAUSTED "Stream removed" instead of our status and its details. grpc-message is
# percent-encoded (a non-ASCII byte takes 3) and the details are base64 (4/3), so with these
# bounds the whole trailer stays under ~6 KiB, however many violations a request has.
MAX_MESSAGE_BYTES = 768
MAX_FIELD_BYTES = 384
MAX_DESCRIPTION_BYTES = 384
MAX_VIOLATIONS_BYTES = 1536
MAX_RESOURCES_BYTES = 1536

_CODES: dict[type[errors.QuiverError], tuple[grpc.StatusCode, int]] = {
    errors.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    errors.NotFound: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    errors.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    errors.AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    errors.ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    errors.Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    errors.Unavailable: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    errors.DataLoss: (grpc.StatusCode.DATA_LOSS, code_pb2.DATA_LOSS),
    errors.DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, code_pb2.DEADLINE_EXCEEDED),
}


def _codes(error: errors.QuiverError) -> tuple[grpc.StatusCode, int]:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL, code_pb2.INTERNAL


def status_code_of(error: errors.QuiverError) -> grpc.StatusCode:
    return _codes(error)[0]


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, ending in "…" when cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "…"


def _violations(error: errors.InvalidArgument) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The first violations, each clipped, as many as fit MAX_VIOLATIONS_BYTES (at least one)."""
    kept: list[error_details_pb2.BadRequest.FieldViolation] = []
    used = 0
    for v in error.violations:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=clip(v.field, MAX_FIELD_BYTES),
            description=clip(v.description, MAX_DESCRIPTION_BYTES),
        )
        size = violation.ByteSize()
        if kept and used + size > MAX_VIOLATIONS_BYTES:
            break
        kept.append(violation)
        used += size
    return kept


def _resources(error: errors.NotFound) -> list[error_details_pb2.ResourceInfo]:
    """One ResourceInfo per missing resource, as many as fit MAX_RESOURCES_BYTES."""
    kept: list[error_details_pb2.ResourceInfo] = []
    used = 0
    for r in error.resources:
        info = error_details_pb2.ResourceInfo(
            resource_type=clip(r.type, MAX_FIELD_BYTES),
            resource_name=clip(r.name, MAX_FIELD_BYTES),
            description="not found",
        )
        size = info.ByteSize() + 60  # the Any's type URL
        if kept and used + size > MAX_RESOURCES_BYTES:
            break
        kept.append(info)
        used += size
    return kept


def to_status(error: errors.QuiverError, request_id: str = "") -> grpc.Status:
    number = _codes(error)[1]
    message = clip(error.message, MAX_MESSAGE_BYTES)
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    if request_id:
        info.metadata["request_id"] = request_id
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if isinstance(error, errors.InvalidArgument):
        bad = error_details_pb2.BadRequest(field_violations=_violations(error))
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    if isinstance(error, errors.NotFound):
        for resource in _resources(error):
            packed = any_pb2.Any()
            packed.Pack(resource)
            details.append(packed)
    return rpc_status.to_status(status_pb2.Status(code=number, message=message, details=details))


# -- requests grpc cannot decode ------------------------------------------------------------

DECODE_DEPTH = 100
"""upb's default limit on nested messages (the request itself is level 1)."""
_WALK_BUDGET = 10_000
"""Fields the search for the culprit may visit: it runs on the event loop."""


def undecodable_request(method: str, data: bytes, exc: BaseException) -> errors.InvalidArgument:
    """INVALID_ARGUMENT for request bytes that do not decode (grpc alone would answer UNKNOWN),
    naming the field at fault when the wire format shows it: a string that is not UTF-8,
    messages nested past the decoder's limit, a field cut short."""
    try:
        name = method.strip("/").replace("/", ".")
        descriptor = descriptor_pool.Default().FindMethodByName(name).input_type
    except KeyError:
        descriptor = None
    fault = _walk(descriptor, data, "", 1, [_WALK_BUDGET]) if descriptor is not None else None
    if fault is None:
        kind = descriptor.full_name if descriptor is not None else "request message"
        why = str(exc).rpartition("': ")[2] or type(exc).__name__
        fault = ("request", f"is not a valid {kind}: {why}")
    return errors.InvalidArgument(
        [errors.FieldViolation(clip(fault[0], MAX_FIELD_BYTES), fault[1])],
        reason="MALFORMED_REQUEST",
    )


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return None


def _walk(
    descriptor: Descriptor, data: bytes, path: str, depth: int, budget: list[int]
) -> tuple[str, str] | None:
    """(field path, what is wrong) for the first fault found in ``data``, or None."""
    here = path or "request"
    seen: dict[int, int] = {}
    pos = 0
    while pos < len(data):
        budget[0] -= 1
        if budget[0] < 0:
            return None
        key = _varint(data, pos)
        if key is None:
            return here, "is cut short or corrupt (a field tag does not end)"
        number, wire = key[0] >> 3, key[0] & 7
        pos = key[1]
        field = descriptor.fields_by_number.get(number)
        name = _field_path(path, field, seen) if field is not None else here
        if wire == 0:
            value = _varint(data, pos)
            if value is None:
                return name, "is cut short or corrupt (a number does not end)"
            pos = value[1]
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size = _varint(data, pos)
            if size is None or size[1] + size[0] > len(data):
                return name, "is cut short (its length runs past the end of the message)"
            payload = data[size[1] : size[1] + size[0]]
            pos = size[1] + size[0]
            if field is None:
                continue
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return name, f"is not valid UTF-8 text (byte {exc.start}: {exc.reason})"
            elif field.message_type is not None:
                if depth >= DECODE_DEPTH:
                    return name, f"nests messages more than {DECODE_DEPTH} levels deep"
                found = _walk(field.message_type, payload, name, depth + 1, budget)
                if found is not None:
                    return found
        else:
            return None  # groups or a corrupt wire type: no field to name
    if pos > len(data):
        return here, "is cut short (a fixed-size number runs past the end)"
    return None


def _field_path(path: str, field: FieldDescriptor, seen: dict[int, int]) -> str:
    name = f"{path}.{field.name}" if path else field.name
    if not field.is_repeated:
        return name
    index = seen.get(field.number, 0)
    seen[field.number] = index + 1
    return f"{name}[{index}]"
