"""FileBatchService: validate → core → convert."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio
from quiver.server.api import convert
from quiver.server.api.context import current_principal
from quiver.server.core.batches import BatchFileSpec, FileBatches
from quiver.server.core.errors import FieldViolation, InvalidArgument
from quiver.server.core.validation import check_id, check_list_params, raise_if
from quiver.server.core.watch import WatchMessage
from quiver.v1 import file_batches_pb2 as pb
from quiver.v1 import file_batches_pb2_grpc

Ctx = aio.ServicerContext[Any, Any]


def _ids(request: Any) -> tuple[str, str]:
    raise_if(
        check_id(request.vector_store_id, "vector_store_id", "vs_")
        + check_id(request.batch_id, "batch_id", "vsfb_")
    )
    return str(request.vector_store_id), str(request.batch_id)


def _specs(request: pb.CreateFileBatchRequest) -> list[BatchFileSpec]:
    violations: list[FieldViolation] = []
    specs: list[BatchFileSpec] = []
    if request.file_ids and request.files:
        raise InvalidArgument.one("files", "set either file_ids or files, not both")
    if request.file_ids:
        attributes, bad = convert.attributes_in(request.attributes)
        chunking, more = convert.chunking_in(
            request.chunking_strategy if request.HasField("chunking_strategy") else None
        )
        violations += bad + more
        specs = [BatchFileSpec(f, attributes, chunking) for f in request.file_ids]
    else:
        for i, item in enumerate(request.files):
            attributes, bad = convert.attributes_in(item.attributes, f"files[{i}].attributes")
            chunking, more = convert.chunking_in(
                item.chunking_strategy if item.HasField("chunking_strategy") else None,
                f"files[{i}].chunking_strategy",
            )
            violations += bad + more
            specs.append(BatchFileSpec(item.file_id, attributes, chunking))
    if not specs:
        violations.append(FieldViolation("file_ids", "name 1…2000 files in file_ids or files"))
    if violations:
        raise InvalidArgument(violations[:50])
    return specs


def _watch_out(message: WatchMessage) -> pb.WatchFileBatchResponse:
    return pb.WatchFileBatchResponse(
        sequence=message.sequence,
        type=pb.WATCH_EVENT_TYPE_SNAPSHOT if message.snapshot else pb.WATCH_EVENT_TYPE_CHANGE,
        file_batch=convert.batch_out(message.batch),
        files=[
            pb.FileBatchFileUpdate(
                file_id=f.file_id,
                status=convert.file_status_out(f.status),
                last_error=convert.last_error_out(f.last_error),
            )
            for f in message.files
        ],
    )


class FileBatchServicer(file_batches_pb2_grpc.FileBatchServiceServicer):
    def __init__(self, batches: FileBatches) -> None:
        self._batches = batches
        # Watchers woken together share one message (the hub builds it once): convert it once.
        self._last_out: tuple[WatchMessage, pb.WatchFileBatchResponse] | None = None

    def _out(self, message: WatchMessage) -> pb.WatchFileBatchResponse:
        last = self._last_out
        if last is not None and last[0] is message:
            return last[1]
        out = _watch_out(message)
        self._last_out = (message, out)
        return out

    async def CreateFileBatch(
        self, request: pb.CreateFileBatchRequest, context: Ctx
    ) -> pb.CreateFileBatchResponse:
        raise_if(check_id(request.vector_store_id, "vector_store_id", "vs_"))
        batch = await self._batches.create(
            current_principal(),
            request.vector_store_id,
            _specs(request),
            request.request_id,
            listed_in="files" if request.files else "file_ids",
        )
        return pb.CreateFileBatchResponse(file_batch=convert.batch_out(batch))

    async def GetFileBatch(
        self, request: pb.GetFileBatchRequest, context: Ctx
    ) -> pb.GetFileBatchResponse:
        batch = await self._batches.get(current_principal(), *_ids(request))
        return pb.GetFileBatchResponse(file_batch=convert.batch_out(batch))

    async def CancelFileBatch(
        self, request: pb.CancelFileBatchRequest, context: Ctx
    ) -> pb.CancelFileBatchResponse:
        batch = await self._batches.cancel(current_principal(), *_ids(request))
        return pb.CancelFileBatchResponse(file_batch=convert.batch_out(batch))

    async def ListFileBatchFiles(
        self, request: pb.ListFileBatchFilesRequest, context: Ctx
    ) -> pb.ListFileBatchFilesResponse:
        store_id, batch_id = _ids(request)
        params = check_list_params(request.limit, request.order, request.after, request.before)
        status, bad = convert.file_status_in(request.filter)
        raise_if(bad)
        page = await self._batches.list_files(
            current_principal(), store_id, batch_id, params, status
        )
        return pb.ListFileBatchFilesResponse(
            data=[convert.store_file_out(f) for f in page.data],
            **convert.page_fields(page, [f.id for f in page.data]),
        )

    async def WatchFileBatch(
        self, request: pb.WatchFileBatchRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchFileBatchResponse]:
        store_id, batch_id = _ids(request)
        stream = self._batches.watch(
            current_principal(), store_id, batch_id, request.after_sequence
        )
        try:
            async for message in stream:
                yield self._out(message)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
