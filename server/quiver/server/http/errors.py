"""Core errors as OpenAI's error envelope: ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from dataclasses import dataclass

from quiver.server.core import errors

MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class HttpError:
    """What an error answers: the HTTP status and the envelope's fields."""

    status: int
    type: str
    message: str
    param: str | None
    code: str | None

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# Reasons whose status differs from their class's: OpenAI's own choices.
_BY_REASON: dict[str, tuple[int, str]] = {
    "FILE_TOO_LARGE": (413, "invalid_request_error"),
    "BODY_TOO_LARGE": (413, "invalid_request_error"),
    "VECTOR_STORE_EXPIRED": (410, "invalid_request_error"),  # as the gateway answers
    "DISK_FULL": (507, "server_error"),
}

_BY_CLASS: list[tuple[type[errors.QuiverError], int, str]] = [
    (errors.InvalidArgument, 400, "invalid_request_error"),
    (errors.Unauthenticated, 401, "invalid_request_error"),
    (errors.NotFound, 404, "invalid_request_error"),
    (errors.AlreadyExists, 409, "invalid_request_error"),
    (errors.FailedPrecondition, 409, "invalid_request_error"),
    (errors.ResourceExhausted, 429, "rate_limit_exceeded"),
    (errors.DeadlineExceeded, 408, "invalid_request_error"),
    (errors.Unavailable, 503, "server_error"),
    (errors.DataLoss, 500, "server_error"),
]


def from_core(error: errors.QuiverError) -> HttpError:
    """The status and envelope for a core error: 400 names the first bad field in ``param``."""
    status, kind = 500, "server_error"
    if error.reason in _BY_REASON:
        status, kind = _BY_REASON[error.reason]
    else:
        for cls, number, name in _BY_CLASS:
            if isinstance(error, cls):
                status, kind = number, name
                break
    param = None
    if isinstance(error, errors.InvalidArgument):
        param = error.violations[0].field
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return HttpError(status, kind, message, param, error.reason.lower())


def internal(request_id: str) -> HttpError:
    return HttpError(
        500,
        "server_error",
        f"internal error (request id {request_id}); the server logged the details",
        None,
        "internal",
    )


def not_found_route(method: str, path: str) -> HttpError:
    return HttpError(
        404,
        "invalid_request_error",
        f"Invalid URL ({method} {path[:200]})",
        None,
        "unknown_url",
    )


def method_not_allowed(method: str, path: str) -> HttpError:
    return HttpError(
        405,
        "invalid_request_error",
        f"{method} is not allowed on {path[:200]}",
        None,
        "method_not_allowed",
    )
