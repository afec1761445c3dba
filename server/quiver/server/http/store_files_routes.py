"""``/vector_stores/{id}/files``: create, list, retrieve, update attributes, delete,
``/content``."""

from __future__ import annotations

from quiver.server.core.errors import InvalidArgument
from quiver.server.core.principal import Principal
from quiver.server.core.validation import check_id, raise_if
from quiver.server.http import body, convert, lists
from quiver.server.http.guard import Gate, guarded
from quiver.server.http.services import HttpServices
from quiver.server.http.stores_routes import store_id_of
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def _ids(request: Request) -> tuple[str, str]:
    store_id = str(request.path_params["vector_store_id"])
    file_id = str(request.path_params["file_id"])
    raise_if(check_id(store_id, "vector_store_id", "vs_") + check_id(file_id, "file_id", "file-"))
    return store_id, file_id


class StoreFileRoutes:
    def __init__(self, core: HttpServices) -> None:
        self.core = core

    def routes(self, gate: Gate) -> list[Route]:
        many = "/vector_stores/{vector_store_id}/files"
        one = many + "/{file_id}"
        return [
            Route(many, guarded(gate, "vector_store_files.create", self.create), methods=["POST"]),
            Route(many, guarded(gate, "vector_store_files.list", self.list), methods=["GET"]),
            Route(one, guarded(gate, "vector_store_files.retrieve", self.get), methods=["GET"]),
            Route(one, guarded(gate, "vector_store_files.update", self.update), methods=["POST"]),
            Route(one, guarded(gate, "vector_store_files.delete", self.delete), methods=["DELETE"]),
            Route(
                one + "/content",
                guarded(gate, "vector_store_files.content", self.content),
                methods=["GET"],
            ),
        ]

    async def create(self, request: Request, principal: Principal) -> Response:
        store_id = store_id_of(request)
        data = await body.read_json(request)
        body.only(data, ("file_id", "attributes", "chunking_strategy"))
        file_id = body.string(data, "file_id")
        attributes, bad = convert.attributes_in(data.get("attributes"))
        chunking, more = convert.chunking_in(data.get("chunking_strategy"))
        raise_if(check_id(file_id, "file_id", "file-") + bad + more)
        file = await self.core.store_files.create(
            principal, store_id, file_id, attributes, chunking
        )
        return JSONResponse(convert.store_file_out(file))

    async def list(self, request: Request, principal: Principal) -> Response:
        store_id = store_id_of(request)
        params = lists.list_params(request)
        status = lists.status_filter(request)
        page = await self.core.store_files.list(principal, store_id, params, status)
        return JSONResponse(convert.page_out(page, [convert.store_file_out(f) for f in page.data]))

    async def get(self, request: Request, principal: Principal) -> Response:
        file = await self.core.store_files.get(principal, *_ids(request))
        return JSONResponse(convert.store_file_out(file))

    async def update(self, request: Request, principal: Principal) -> Response:
        store_id, file_id = _ids(request)
        data = await body.read_json(request)
        body.only(data, ("attributes",))
        if data.get("attributes") is None:
            raise InvalidArgument.one("attributes", "is required (an object; {} clears them)")
        attributes, bad = convert.attributes_in(data.get("attributes"))
        raise_if(bad)
        file = await self.core.store_files.update(principal, store_id, file_id, attributes)
        return JSONResponse(convert.store_file_out(file))

    async def delete(self, request: Request, principal: Principal) -> Response:
        store_id, file_id = _ids(request)
        await self.core.store_files.delete(principal, store_id, file_id)
        await self.core.store_files.removals.wait()  # its chunks are out of the index
        return JSONResponse({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})

    async def content(self, request: Request, principal: Principal) -> Response:
        texts, next_page = await self.core.store_files.content(
            principal, *_ids(request), body.query_str(request, "page")
        )
        return JSONResponse(
            {
                "object": "vector_store.file_content.page",
                "data": [{"type": "text", "text": t} for t in texts],
                "has_more": bool(next_page),
                "next_page": next_page or None,
            }
        )
