"""``/files``: upload (multipart), list, retrieve, delete, ``/content``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from quiver.server.core.principal import Principal
from quiver.server.core.validation import check_id, check_purpose, raise_if
from quiver.server.core.verified_content import VerifiedContent
from quiver.server.http import convert, lists
from quiver.server.http.guard import Gate, guarded
from quiver.server.http.services import HttpServices
from quiver.server.http.uploads import receive_file
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DOWNLOAD_PIECE = 64 * 1024


def _file_id(request: Request) -> str:
    file_id = str(request.path_params["file_id"])
    raise_if(check_id(file_id, "file_id", "file-"))
    return file_id


class FileRoutes:
    def __init__(self, core: HttpServices) -> None:
        self.core = core

    def routes(self, gate: Gate) -> list[Route]:
        return [
            Route("/files", guarded(gate, "files.create", self.create), methods=["POST"]),
            Route("/files", guarded(gate, "files.list", self.list), methods=["GET"]),
            Route("/files/{file_id}", guarded(gate, "files.retrieve", self.get), methods=["GET"]),
            Route(
                "/files/{file_id}", guarded(gate, "files.delete", self.delete), methods=["DELETE"]
            ),
            Route(
                "/files/{file_id}/content",
                guarded(gate, "files.content", self.content),
                methods=["GET"],
            ),
        ]

    async def create(self, request: Request, principal: Principal) -> Response:
        core = self.core
        stored = await receive_file(
            request, principal, core.files, core.uploads, core.upload_idle_timeout
        )
        return JSONResponse(convert.file_out(stored))

    async def list(self, request: Request, principal: Principal) -> Response:
        params = lists.list_params(request)
        purpose = request.query_params.get("purpose", "")
        if purpose:
            raise_if(check_purpose(purpose)[1])
        page = await self.core.files.list(principal, params, purpose)
        return JSONResponse(convert.page_out(page, [convert.file_out(f) for f in page.data]))

    async def get(self, request: Request, principal: Principal) -> Response:
        return JSONResponse(
            convert.file_out(await self.core.files.get(principal, _file_id(request)))
        )

    async def delete(self, request: Request, principal: Principal) -> Response:
        file_id = _file_id(request)
        await self.core.file_deletion.delete(principal, file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def content(self, request: Request, principal: Principal) -> Response:
        content = await self.core.files.open_content(principal, _file_id(request))
        try:
            # The first piece before the status line: a file missing or short from the
            # start answers an error; damage found later cuts the body short of its
            # Content-Length, so a client never takes it for the whole file.
            first = await asyncio.to_thread(content.read, DOWNLOAD_PIECE)
        except BaseException:
            content.close()
            raise
        return StreamingResponse(
            _rest(content, first),
            media_type="application/octet-stream",
            headers={"content-length": str(content.file.bytes)},
        )


async def _rest(content: VerifiedContent, first: bytes) -> AsyncIterator[bytes]:
    with content:
        piece = first
        while piece:
            yield piece
            piece = await asyncio.to_thread(content.read, DOWNLOAD_PIECE)
