"""VectorStoreService: validate → core → convert."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from grpc import aio
from quiver.server.api import convert
from quiver.server.api.context import current_principal
from quiver.server.api.forwarding import SearchForwarder
from quiver.server.core.batches import BatchFileSpec, FileBatches
from quiver.server.core.errors import FieldViolation, InvalidArgument
from quiver.server.core.filters import Filter, parse_filter
from quiver.server.core.models import ExpiresAfter
from quiver.server.core.search import Searcher, check_search
from quiver.server.core.store_files import StoreFiles
from quiver.server.core.validation import check_id, check_list_params, raise_if
from quiver.server.core.vector_stores import StoreUpdate, VectorStores
from quiver.v1 import vector_stores_pb2 as pb
from quiver.v1 import vector_stores_pb2_grpc

Ctx = aio.ServicerContext[Any, Any]
UPDATE_PATHS = ("name", "expires_after", "metadata")
FILTER_BYTES_INLINE = 4096
"""A search filter of more bytes on the wire is converted and validated on a thread."""


def _parsed_filter(message: pb.Filter) -> Filter:
    return parse_filter(convert.filter_in(message))


def _store_id(request: Any) -> str:
    raise_if(check_id(request.vector_store_id, "vector_store_id", "vs_"))
    return str(request.vector_store_id)


def _store_file_ids(request: Any) -> tuple[str, str]:
    raise_if(
        check_id(request.vector_store_id, "vector_store_id", "vs_")
        + check_id(request.file_id, "file_id", "file-")
    )
    return str(request.vector_store_id), str(request.file_id)


class VectorStoreServicer(vector_stores_pb2_grpc.VectorStoreServiceServicer):
    def __init__(
        self,
        stores: VectorStores,
        files: StoreFiles,
        batches: FileBatches,
        searcher: Searcher,
        forwarder: SearchForwarder | None = None,
    ) -> None:
        self._stores = stores
        self._files = files
        self._batches = batches
        self._searcher = searcher
        self._forwarder = forwarder
        """Searches of stores another replica owns go there (api/forwarding.py)."""

    async def CreateVectorStore(
        self, request: pb.CreateVectorStoreRequest, context: Ctx
    ) -> pb.CreateVectorStoreResponse:
        principal = current_principal()
        expires = (
            ExpiresAfter(request.expires_after.anchor, request.expires_after.days)
            if request.HasField("expires_after")
            else None
        )
        name, metadata = request.name, dict(request.metadata)
        model, dimensions = request.embedding_model, request.embedding_dimensions
        if request.file_ids:  # processed like a batch; the store's file_counts follow it
            chunking, bad = convert.chunking_in(
                request.chunking_strategy if request.HasField("chunking_strategy") else None
            )
            raise_if(bad)
            store = await self._batches.create_store_with_files(
                principal,
                [BatchFileSpec(f, {}, chunking) for f in request.file_ids],
                name=name,
                metadata=metadata,
                expires_after=expires,
                embedding_model=model,
                embedding_dimensions=dimensions,
            )
        else:
            store = await self._stores.create(
                principal,
                name=name,
                metadata=metadata,
                expires_after=expires,
                embedding_model=model,
                embedding_dimensions=dimensions,
            )
        return pb.CreateVectorStoreResponse(vector_store=convert.store_out(store))

    async def GetVectorStore(
        self, request: pb.GetVectorStoreRequest, context: Ctx
    ) -> pb.GetVectorStoreResponse:
        store = await self._stores.get(current_principal(), _store_id(request))
        return pb.GetVectorStoreResponse(vector_store=convert.store_out(store))

    async def ListVectorStores(
        self, request: pb.ListVectorStoresRequest, context: Ctx
    ) -> pb.ListVectorStoresResponse:
        params = check_list_params(request.limit, request.order, request.after, request.before)
        page = await self._stores.list(current_principal(), params)
        return pb.ListVectorStoresResponse(
            data=[convert.store_out(s) for s in page.data],
            **convert.page_fields(page, [s.id for s in page.data]),
        )

    async def UpdateVectorStore(
        self, request: pb.UpdateVectorStoreRequest, context: Ctx
    ) -> pb.UpdateVectorStoreResponse:
        store_id = _store_id(request)
        paths = list(request.update_mask.paths)
        bad = [p for p in paths if p not in UPDATE_PATHS]
        if bad:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "update_mask", f"unknown path {p!r}; allowed: {', '.join(UPDATE_PATHS)}"
                    )
                    for p in bad
                ]
            )
        has_expiry = request.HasField("expires_after")
        expires = (
            ExpiresAfter(request.expires_after.anchor, request.expires_after.days)
            if has_expiry
            else None
        )
        if paths:
            change = StoreUpdate(
                name=request.name if "name" in paths else None,
                expires_after=expires if "expires_after" in paths else None,
                clear_expires_after="expires_after" in paths and not has_expiry,
                metadata=dict(request.metadata) if "metadata" in paths else None,
            )
        else:
            change = StoreUpdate(
                name=request.name if request.HasField("name") else None,
                expires_after=expires,
                metadata=dict(request.metadata) if request.metadata else None,
            )
        store = await self._stores.update(current_principal(), store_id, change)
        return pb.UpdateVectorStoreResponse(vector_store=convert.store_out(store))

    async def DeleteVectorStore(
        self, request: pb.DeleteVectorStoreRequest, context: Ctx
    ) -> pb.DeleteVectorStoreResponse:
        store_id = _store_id(request)
        await self._stores.delete(current_principal(), store_id)
        return pb.DeleteVectorStoreResponse(
            id=store_id, object="vector_store.deleted", deleted=True
        )

    async def SearchVectorStore(
        self, request: pb.SearchVectorStoreRequest, context: Ctx
    ) -> pb.SearchVectorStoreResponse:
        store_id = _store_id(request)
        options = request.ranking_options
        filter = None
        if request.HasField("filters"):
            # A big filter (up to 256 nodes of 256-value lists: ~0.2 s of Python) is
            # converted and validated on a thread, not on the event loop.
            if request.filters.ByteSize() > FILTER_BYTES_INLINE:
                filter = await asyncio.to_thread(_parsed_filter, request.filters)
            else:
                filter = _parsed_filter(request.filters)
        search = check_search(
            list(request.query),
            request.max_num_results,
            filter,
            options.ranker,
            options.score_threshold,
        )
        if self._forwarder is not None:
            answer = await self._forwarder.forward(store_id, request, context)
            if answer is not None:
                return answer
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        hits = await self._searcher.search(current_principal(), store_id, search, deadline)
        if self._forwarder is not None:
            self._forwarder.answered_here(context)
        return pb.SearchVectorStoreResponse(
            object="vector_store.search_results.page",
            search_query=search.queries,
            data=[
                pb.SearchResult(
                    file_id=hit.file_id,
                    filename=hit.filename,
                    score=hit.score,
                    attributes={k: convert.python_to_value(v) for k, v in hit.attributes.items()},
                    content=[pb.SearchResultContent(type="text", text=hit.text)],
                )
                for hit in hits
            ],
            has_more=False,
        )

    async def CreateVectorStoreFile(
        self, request: pb.CreateVectorStoreFileRequest, context: Ctx
    ) -> pb.CreateVectorStoreFileResponse:
        store_id, file_id = _store_file_ids(request)
        attributes, bad = convert.attributes_in(request.attributes)
        chunking, more = convert.chunking_in(
            request.chunking_strategy if request.HasField("chunking_strategy") else None
        )
        raise_if(bad + more)
        file = await self._files.create(
            current_principal(), store_id, file_id, attributes, chunking
        )
        return pb.CreateVectorStoreFileResponse(vector_store_file=convert.store_file_out(file))

    async def GetVectorStoreFile(
        self, request: pb.GetVectorStoreFileRequest, context: Ctx
    ) -> pb.GetVectorStoreFileResponse:
        file = await self._files.get(current_principal(), *_store_file_ids(request))
        return pb.GetVectorStoreFileResponse(vector_store_file=convert.store_file_out(file))

    async def ListVectorStoreFiles(
        self, request: pb.ListVectorStoreFilesRequest, context: Ctx
    ) -> pb.ListVectorStoreFilesResponse:
        store_id = _store_id(request)
        params = check_list_params(request.limit, request.order, request.after, request.before)
        status, bad = convert.file_status_in(request.filter)
        raise_if(bad)
        page = await self._files.list(current_principal(), store_id, params, status)
        return pb.ListVectorStoreFilesResponse(
            data=[convert.store_file_out(f) for f in page.data],
            **convert.page_fields(page, [f.id for f in page.data]),
        )

    async def UpdateVectorStoreFile(
        self, request: pb.UpdateVectorStoreFileRequest, context: Ctx
    ) -> pb.UpdateVectorStoreFileResponse:
        store_id, file_id = _store_file_ids(request)
        attributes, bad = convert.attributes_in(request.attributes)
        raise_if(bad)
        file = await self._files.update(current_principal(), store_id, file_id, attributes)
        return pb.UpdateVectorStoreFileResponse(vector_store_file=convert.store_file_out(file))

    async def DeleteVectorStoreFile(
        self, request: pb.DeleteVectorStoreFileRequest, context: Ctx
    ) -> pb.DeleteVectorStoreFileResponse:
        store_id, file_id = _store_file_ids(request)
        await self._files.delete(current_principal(), store_id, file_id)
        await self._files.removals.wait()  # its chunks are out of the index when we answer
        return pb.DeleteVectorStoreFileResponse(
            id=file_id, object="vector_store.file.deleted", deleted=True
        )

    async def GetVectorStoreFileContent(
        self, request: pb.GetVectorStoreFileContentRequest, context: Ctx
    ) -> pb.GetVectorStoreFileContentResponse:
        texts, next_page = await self._files.content(
            current_principal(), *_store_file_ids(request), request.page
        )
        return pb.GetVectorStoreFileContentResponse(
            object="vector_store.file_content.page",
            data=[pb.SearchResultContent(type="text", text=t) for t in texts],
            has_more=bool(next_page),
            next_page=next_page,
        )
