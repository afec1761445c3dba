"""``/vector_stores/{id}/file_batches``: create, retrieve, ``/cancel``, ``/files``, and the
``/events`` Server-Sent Events extension."""

from __future__ import annotations

import asyncio
from typing import Any

from quiver.server.core.batches import BatchFileSpec
from quiver.server.core.errors import FieldViolation, InvalidArgument
from quiver.server.core.principal import Principal
from quiver.server.core.validation import check_id, raise_if
from quiver.server.http import body, convert, lists
from quiver.server.http.events import batch_events
from quiver.server.http.guard import Gate, guarded
from quiver.server.http.services import HttpServices
from quiver.server.http.stores_routes import store_id_of
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CREATE_FIELDS = ("file_ids", "files", "attributes", "chunking_strategy", "request_id")
MAX_FILES = 2000


def _ids(request: Request) -> tuple[str, str]:
    store_id = str(request.path_params["vector_store_id"])
    batch_id = str(request.path_params["batch_id"])
    raise_if(check_id(store_id, "vector_store_id", "vs_") + check_id(batch_id, "batch_id", "vsfb_"))
    return store_id, batch_id


def _specs(data: dict[str, Any]) -> tuple[list[BatchFileSpec], str]:
    """The batch's files, and which field listed them (``file_ids`` or ``files``)."""
    violations: list[FieldViolation] = []
    specs: list[BatchFileSpec] = []
    file_ids = body.strings(data, "file_ids", MAX_FILES)
    items = body.array(data, "files") or []
    if file_ids and items:
        raise InvalidArgument.one("files", "set either file_ids or files, not both")
    if len(items) > MAX_FILES:
        raise InvalidArgument.one("files", f"has {len(items)} items; at most {MAX_FILES}")
    if file_ids:
        attributes, bad = convert.attributes_in(data.get("attributes"))
        chunking, more = convert.chunking_in(data.get("chunking_strategy"))
        violations += bad + more
        specs = [BatchFileSpec(f, attributes, chunking) for f in file_ids]
    for i, item in enumerate(items):
        where = f"files[{i}]"
        if not isinstance(item, dict):
            raise InvalidArgument.one(where, "must be an object {file_id, attributes?, ...}")
        body.only(item, ("file_id", "attributes", "chunking_strategy"), where)
        file_id = body.string(item, "file_id", where=f"{where}.file_id")
        attributes, bad = convert.attributes_in(item.get("attributes"), f"{where}.attributes")
        chunking, more = convert.chunking_in(
            item.get("chunking_strategy"), f"{where}.chunking_strategy"
        )
        violations += check_id(file_id, f"{where}.file_id", "file-") + bad + more
        specs.append(BatchFileSpec(file_id, attributes, chunking))
    if not specs:
        violations.append(FieldViolation("file_ids", "name 1…2000 files in file_ids or files"))
    if violations:
        raise InvalidArgument(violations[:50])
    return specs, "files" if items else "file_ids"


class BatchRoutes:
    def __init__(self, core: HttpServices, closing: asyncio.Event) -> None:
        self.core = core
        self.closing = closing  # set when the server starts draining: event streams end

    def routes(self, gate: Gate) -> list[Route]:
        many = "/vector_stores/{vector_store_id}/file_batches"
        one = many + "/{batch_id}"
        return [
            Route(many, guarded(gate, "file_batches.create", self.create), methods=["POST"]),
            Route(one, guarded(gate, "file_batches.retrieve", self.get), methods=["GET"]),
            Route(
                one + "/cancel", guarded(gate, "file_batches.cancel", self.cancel), methods=["POST"]
            ),
            Route(
                one + "/files",
                guarded(gate, "file_batches.list_files", self.list_files),
                methods=["GET"],
            ),
            Route(one + "/events", guarded(gate, "file_batches.events", self.events)),
        ]

    async def create(self, request: Request, principal: Principal) -> Response:
        store_id = store_id_of(request)
        data = await body.read_json(request)
        # The gateway SDK always sends skip_duplicates (default false): Quiver does not refuse
        # duplicate content, so only false (or null) is accepted.
        body.only(data, CREATE_FIELDS, unsupported={"skip_duplicates": False})
        specs, listed_in = _specs(data)
        request_id = body.string(data, "request_id") or request.headers.get("idempotency-key", "")
        if len(request_id) > 128:
            raise InvalidArgument.one("request_id", "is longer than 128 characters")
        batch = await self.core.batches.create(principal, store_id, specs, request_id, listed_in)
        return JSONResponse(convert.batch_out(batch))

    async def get(self, request: Request, principal: Principal) -> Response:
        batch = await self.core.batches.get(principal, *_ids(request))
        return JSONResponse(convert.batch_out(batch))

    async def cancel(self, request: Request, principal: Principal) -> Response:
        batch = await self.core.batches.cancel(principal, *_ids(request))
        return JSONResponse(convert.batch_out(batch))

    async def list_files(self, request: Request, principal: Principal) -> Response:
        store_id, batch_id = _ids(request)
        params = lists.list_params(request)
        status = lists.status_filter(request)
        page = await self.core.batches.list_files(principal, store_id, batch_id, params, status)
        return JSONResponse(convert.page_out(page, [convert.store_file_out(f) for f in page.data]))

    async def events(self, request: Request, principal: Principal) -> Response:
        store_id, batch_id = _ids(request)
        return await batch_events(
            request, principal, self.core.batches, store_id, batch_id, self.closing
        )
