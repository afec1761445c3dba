"""OpenAI-style cursor pages (limit, order, after, before) over any owned table."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from quiver.server.storage.database import Database

T = TypeVar("T")


class PageSpec(Protocol):
    """A validated list request (the core's ``ListParams``)."""

    @property
    def limit(self) -> int: ...

    @property
    def order(self) -> str: ...  # "asc" or "desc"

    @property
    def after(self) -> str | None: ...

    @property
    def before(self) -> str | None: ...


class UnknownCursor(LookupError):
    """``after``/``before`` names no row of the list."""

    def __init__(self, field: str, cursor: str) -> None:
        super().__init__(f"no object with id {cursor[:80]!r} in this list")
        self.field = field
        self.cursor = cursor


@dataclass(frozen=True)
class Rows(Generic[T]):
    """One page's rows, and whether more follow in the direction of travel."""

    items: list[T]
    has_more: bool


def fetch_page(
    db: Database,
    *,
    table: str,
    where: str,
    params: tuple[object, ...],
    page: PageSpec,
    convert: Callable[[sqlite3.Row], T],
    id_col: str = "id",
    columns: str = "*",
    table_params: tuple[object, ...] = (),
) -> Rows[T]:
    """Rows of ``table`` matching ``where``, ordered by insertion (``seq``).

    ``after``/``before`` are ids of rows in the same scope; an unknown id is ``UnknownCursor``.
    ``has_more`` says whether more rows follow in the direction of travel.
    ``table`` may be a parenthesised subquery whose placeholders take ``table_params``.
    """
    conds = [where]
    args = list(params)
    desc = page.order == "desc"
    for field, cursor, newer in (("after", page.after, not desc), ("before", page.before, desc)):
        if cursor is None:
            continue
        row = db.execute(
            f"SELECT seq FROM {table} WHERE {where} AND {id_col} = ?",
            (*table_params, *params, cursor),
        ).fetchone()
        if row is None:
            raise UnknownCursor(field, cursor)
        conds.append("seq > ?" if newer else "seq < ?")
        args.append(row["seq"])
    # Paging backwards (only `before`): walk the other way, then restore the order.
    backwards = page.before is not None and page.after is None
    ascending = desc == backwards
    rows = db.execute(
        f"SELECT {columns} FROM {table} WHERE {' AND '.join(conds)} "
        f"ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?",
        (*table_params, *args, page.limit + 1),
    ).fetchall()
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    if backwards:
        rows.reverse()
    return Rows([convert(r) for r in rows], has_more)
