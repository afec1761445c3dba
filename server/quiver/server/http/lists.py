"""OpenAI's list query parameters (``limit``, ``order``, ``after``, ``before``, ``filter``)."""

from __future__ import annotations

from quiver.server.core.errors import InvalidArgument
from quiver.server.core.models import FileStatus, ListParams
from quiver.server.core.validation import check_list_params
from quiver.server.http import body
from starlette.requests import Request


def list_params(request: Request) -> ListParams:
    limit = body.query_int(request, "limit")
    if limit == 0 and body.query_str(request, "limit"):
        limit = -1  # "limit=0" is out of range, not the default
    return check_list_params(
        limit,
        body.query_str(request, "order"),
        body.query_str(request, "after"),
        body.query_str(request, "before"),
    )


def status_filter(request: Request) -> FileStatus | None:
    raw = body.query_str(request, "filter")
    if not raw:
        return None
    try:
        return FileStatus(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in FileStatus)
        raise InvalidArgument.one("filter", f"must be one of {allowed}; not {raw[:40]!r}") from None
