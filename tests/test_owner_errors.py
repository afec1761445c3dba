"""api/owner_errors.py: an owner replica's error status, as the gRPC edge builds it
(api/errors.to_status), turns back into the core error it was raised from, so the HTTP edge
answers a forwarded search's error as it would its own (http/errors.from_core)."""

from __future__ import annotations

import grpc
import pytest
from quiver.server.api.errors import to_status
from quiver.server.api.forwarding import OwnerError
from quiver.server.api.owner_errors import core_error_of
from quiver.server.core import errors
from quiver.server.http.errors import from_core


def round_trip(error: errors.QuiverError) -> errors.QuiverError:
    status = to_status(error, "req-1")
    return core_error_of(OwnerError(status.code, status.details, tuple(status.trailing_metadata)))


@pytest.mark.parametrize(
    "error",
    [
        errors.NotFound(
            "no vector store vs_x",
            reason="VECTOR_STORE_NOT_FOUND",
            resources=[errors.Resource("vector_store", "vs_x")],
        ),
        errors.InvalidArgument(
            [
                errors.FieldViolation("query[0]", "must not be empty"),
                errors.FieldViolation("max_num_results", "must be 1…50, not 99"),
            ]
        ),
        errors.FailedPrecondition("the store expired", reason="VECTOR_STORE_EXPIRED"),
        errors.ResourceExhausted("too many", reason="QUERY_EMBEDDING_QUEUE_FULL"),
        errors.Unavailable("the embedder is down", reason="EMBEDDER_UNAVAILABLE"),
        errors.DeadlineExceeded("too slow"),
        errors.Unauthenticated("bad key", reason="INVALID_API_KEY"),
    ],
)
def test_an_owner_error_is_answered_over_http_as_if_raised_here(
    error: errors.QuiverError,
) -> None:
    back = round_trip(error)
    assert type(back) is type(error)
    assert (back.reason, back.message) == (error.reason, error.message)
    assert from_core(back) == from_core(error)
    if isinstance(error, errors.InvalidArgument):
        assert isinstance(back, errors.InvalidArgument)
        assert back.violations == error.violations
    if isinstance(error, errors.NotFound):
        assert isinstance(back, errors.NotFound)
        assert back.resources == error.resources


def test_a_status_without_details_keeps_its_code_and_message() -> None:
    back = core_error_of(OwnerError(grpc.StatusCode.INTERNAL, "internal error (request id r)", ()))
    assert from_core(back).status == 500 and back.message == "internal error (request id r)"
    bad = core_error_of(OwnerError(grpc.StatusCode.INVALID_ARGUMENT, "query: bad", ()))
    assert from_core(bad).status == 400 and bad.message == "query: bad"
