"""``/vector_stores``: create, list, retrieve, modify, delete, ``/search``."""

from __future__ import annotations

import asyncio
from typing import Any

from quiver.server.api.context import request_id_var
from quiver.server.api.forwarding import PASSED_ON
from quiver.server.core.batches import BatchFileSpec
from quiver.server.core.errors import InvalidArgument
from quiver.server.core.filters import Filter, parse_filter
from quiver.server.core.principal import Principal
from quiver.server.core.search import check_search
from quiver.server.core.validation import check_id, raise_if
from quiver.server.core.vector_stores import StoreUpdate
from quiver.server.http import body, convert, lists
from quiver.server.http.guard import Gate, guarded
from quiver.server.http.search_forwarding import REPLICA_HEADER
from quiver.server.http.services import HttpServices
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CREATE_FIELDS = (
    "name",
    "file_ids",
    "expires_after",
    "chunking_strategy",
    "metadata",
    "embedding_model",
    "embedding_dimensions",
)
MODIFY_FIELDS = ("name", "expires_after", "metadata")
# OpenAI's `description` and the gateway's retrieval settings: no such thing here.
UNSUPPORTED = {
    "description": "",
    "retrieval_mode": "",
    "extraction_model": "",
    "max_hops": 0,
}
FILTER_BYTES_INLINE = 4096
"""A search whose body is larger than this has its filter converted and validated on a
thread (up to 256 nodes of 256-value lists: ~0.2 s of Python), as the gRPC edge does."""
SEARCH_FIELDS = ("query", "filters", "max_num_results", "ranking_options", "rewrite_query")


def store_id_of(request: Request) -> str:
    store_id = str(request.path_params["vector_store_id"])
    raise_if(check_id(store_id, "vector_store_id", "vs_"))
    return store_id


def _queries(value: Any) -> list[str]:
    """``query``: one string or an array of strings, as OpenAI takes it."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise InvalidArgument.one(f"query[{i}]", "must be a string")
        return list(value)
    raise InvalidArgument.one("query", "is required: a string or an array of strings")


class StoreRoutes:
    def __init__(self, core: HttpServices) -> None:
        self.core = core

    def routes(self, gate: Gate) -> list[Route]:
        one = "/vector_stores/{vector_store_id}"
        return [
            Route(
                "/vector_stores",
                guarded(gate, "vector_stores.create", self.create),
                methods=["POST"],
            ),
            Route(
                "/vector_stores", guarded(gate, "vector_stores.list", self.list), methods=["GET"]
            ),
            Route(one, guarded(gate, "vector_stores.retrieve", self.get), methods=["GET"]),
            Route(one, guarded(gate, "vector_stores.update", self.update), methods=["POST"]),
            Route(one, guarded(gate, "vector_stores.delete", self.delete), methods=["DELETE"]),
            Route(
                one + "/search",
                guarded(gate, "vector_stores.search", self.search),
                methods=["POST"],
            ),
        ]

    async def create(self, request: Request, principal: Principal) -> Response:
        data = await body.read_json(request)
        body.only(data, CREATE_FIELDS, unsupported=UNSUPPORTED)
        expires_raw = data.get("expires_after")
        expires = None if expires_raw is None else convert.expires_in(expires_raw)
        name = body.string(data, "name")
        metadata = body.string_map(data, "metadata") or {}
        model = body.string(data, "embedding_model")
        dimensions = body.integer(data, "embedding_dimensions")
        file_ids = body.strings(data, "file_ids")
        if file_ids:  # processed like a batch; the store's file_counts follow it
            chunking, bad = convert.chunking_in(data.get("chunking_strategy"))
            raise_if(bad)
            store = await self.core.batches.create_store_with_files(
                principal,
                [BatchFileSpec(f, {}, chunking) for f in file_ids],
                name=name,
                metadata=metadata,
                expires_after=expires,
                embedding_model=model,
                embedding_dimensions=dimensions,
            )
        else:
            store = await self.core.stores.create(
                principal,
                name=name,
                metadata=metadata,
                expires_after=expires,
                embedding_model=model,
                embedding_dimensions=dimensions,
            )
        return JSONResponse(convert.store_out(store))

    async def list(self, request: Request, principal: Principal) -> Response:
        page = await self.core.stores.list(principal, lists.list_params(request))
        return JSONResponse(convert.page_out(page, [convert.store_out(s) for s in page.data]))

    async def get(self, request: Request, principal: Principal) -> Response:
        store = await self.core.stores.get(principal, store_id_of(request))
        return JSONResponse(convert.store_out(store))

    async def update(self, request: Request, principal: Principal) -> Response:
        store_id = store_id_of(request)
        data = await body.read_json(request)
        body.only(data, MODIFY_FIELDS, unsupported={"description": ""})
        expires_raw = data.get("expires_after")
        change = StoreUpdate(
            name=body.string(data, "name") if data.get("name") is not None else None,
            expires_after=None if expires_raw is None else convert.expires_in(expires_raw),
            clear_expires_after="expires_after" in data and expires_raw is None,
            metadata=body.string_map(data, "metadata"),
        )
        store = await self.core.stores.update(principal, store_id, change)
        return JSONResponse(convert.store_out(store))

    async def delete(self, request: Request, principal: Principal) -> Response:
        store_id = store_id_of(request)
        await self.core.stores.delete(principal, store_id)
        return JSONResponse({"id": store_id, "object": "vector_store.deleted", "deleted": True})

    async def search(self, request: Request, principal: Principal) -> Response:
        store_id = store_id_of(request)
        data, size = await body.read_json_sized(request)
        body.only(data, SEARCH_FIELDS)
        queries = _queries(data.get("query"))
        raw_filter = data.get("filters")
        filter = None
        if raw_filter is not None and size > FILTER_BYTES_INLINE:
            filter = await asyncio.to_thread(_parsed_filter, raw_filter)
        elif raw_filter is not None:
            filter = _parsed_filter(raw_filter)
        options = body.obj(data, "ranking_options") or {}
        body.only(options, ("ranker", "score_threshold"), "ranking_options")
        rewrite_query = body.boolean(data, "rewrite_query")  # accepted; nothing rewrites
        ranker = body.string(options, "ranker", where="ranking_options.ranker")
        search = check_search(
            queries,
            body.integer(data, "max_num_results"),
            filter,
            ranker,
            body.number(options, "score_threshold", where="ranking_options.score_threshold"),
        )
        forwarding = self.core.search_forwarding
        if forwarding is not None:  # when another live replica owns the store, it searches
            headers = {k: v for k, v in request.headers.items() if k in PASSED_ON}
            headers["x-request-id"] = request_id_var.get()
            answer = await forwarding.ask_owner(
                store_id, search, ranker, rewrite_query, headers, big=size > FILTER_BYTES_INLINE
            )
            if answer is not None:
                return _page(answer.search_query, answer.data, answer.served_by)
        hits = await self.core.searcher.search(principal, store_id, search)
        served_by = "" if forwarding is None else forwarding.replica_id
        return _page(search.queries, [convert.hit_out(hit) for hit in hits], served_by)


def _page(queries: list[str], data: list[convert.Json], served_by: str) -> JSONResponse:
    """A search's results page; ``served_by`` names the replica that searched (a header)."""
    headers = {REPLICA_HEADER: served_by} if served_by else None
    return JSONResponse(
        {
            "object": "vector_store.search_results.page",
            "search_query": queries,
            "data": data,
            "has_more": False,
            "next_page": None,
        },
        headers=headers,
    )


def _parsed_filter(raw_filter: Any) -> Filter:
    return parse_filter(convert.filter_in(raw_filter))
