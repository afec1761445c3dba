"""OpenAI-style cursor pages over PostgreSQL rows (``storage/pagination.py``'s rules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from psycopg.rows import DictRow
from quiver.server.storage.pagination import PageSpec, Rows, UnknownCursor
from quiver.server.storage.postgres.connection import PgDatabase

T = TypeVar("T")


def fetch_page(
    db: PgDatabase,
    *,
    table: str,
    where: str,
    params: tuple[object, ...],
    page: PageSpec,
    convert: Callable[[DictRow], T],
    id_col: str = "id",
    table_params: tuple[object, ...] = (),
) -> Rows[T]:
    """Rows of ``table`` matching ``where`` ordered by ``seq``; see storage/pagination.py."""
    conds = [where]
    args = list(params)
    desc = page.order == "desc"
    for field, cursor, newer in (("after", page.after, not desc), ("before", page.before, desc)):
        if cursor is None:
            continue
        row = db.one(
            f"SELECT seq FROM {table} t WHERE {where} AND {id_col} = %s",
            (*table_params, *params, cursor),
        )
        if row is None:
            raise UnknownCursor(field, cursor)
        conds.append("seq > %s" if newer else "seq < %s")
        args.append(row["seq"])
    backwards = page.before is not None and page.after is None
    ascending = desc == backwards
    rows = db.rows(
        f"SELECT * FROM {table} t WHERE {' AND '.join(conds)} "
        f"ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT %s",
        (*table_params, *args, page.limit + 1),
    )
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    if backwards:
        rows.reverse()
    return Rows([convert(r) for r in rows], has_more)
