"""A page of a repository's rows as the core's ``Page``; an unknown cursor is
INVALID_ARGUMENT naming ``after`` or ``before``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from quiver.server.core.errors import InvalidArgument
from quiver.server.core.models import Page
from quiver.server.storage.pagination import Rows, UnknownCursor

T = TypeVar("T")
U = TypeVar("U")


def page_of(fetch: Callable[[], Rows[T]], convert: Callable[[T], U]) -> Page[U]:
    try:
        rows = fetch()
    except UnknownCursor as exc:
        raise InvalidArgument.one(exc.field, str(exc)) from None
    return Page([convert(r) for r in rows.items], rows.has_more)
