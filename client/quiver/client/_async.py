"""The asyncio client: ``AsyncClient`` and its resource groups."""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc import aio
from quiver.client import _requests as rq
from quiver.client._concurrency import async_bounded_map, check_limit
from quiver.client._settings import CHANNEL_OPTIONS, Settings
from quiver.client.errors import UnavailableError, from_rpc_error
from quiver.client.types import (
    BatchUpdate,
    ChunkingStrategy,
    Deleted,
    ExpiresAfter,
    File,
    FileBatch,
    SearchResponse,
    VectorStore,
    VectorStoreFile,
    attributes_to_pb,
)
from quiver.v1 import file_batches_pb2 as fb
from quiver.v1 import file_batches_pb2_grpc, files_pb2, files_pb2_grpc, vector_stores_pb2_grpc
from quiver.v1 import vector_stores_pb2 as vs

T = TypeVar("T")


class _Transport:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        credentials = settings.credentials()
        if credentials is None:
            self.channel = aio.insecure_channel(settings.target, options=CHANNEL_OPTIONS)
        else:
            self.channel = aio.secure_channel(settings.target, credentials, options=CHANNEL_OPTIONS)
        self.files = files_pb2_grpc.FileServiceStub(self.channel)
        self.stores = vector_stores_pb2_grpc.VectorStoreServiceStub(self.channel)
        self.batches = file_batches_pb2_grpc.FileBatchServiceStub(self.channel)

    async def call(
        self, method: Any, request: Any, *, idempotent: bool, timeout: float | None = None
    ) -> Any:
        """One unary call; UNAVAILABLE is retried with backoff when the call is idempotent."""
        for attempt in itertools.count():
            try:
                return await method(
                    request,
                    metadata=self.settings.metadata(),
                    timeout=timeout if timeout is not None else self.settings.timeout,
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if (
                    idempotent
                    and isinstance(error, UnavailableError)
                    and attempt < self.settings.max_retries
                ):
                    await asyncio.sleep(self.settings.backoff(attempt))
                    continue
                raise error from None
        raise AssertionError("unreachable")

    async def stream(
        self, method: Any, request: Any, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        try:
            async for message in method(
                request, metadata=self.settings.metadata(), timeout=timeout
            ):
                yield message
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def paginate(
        self, fetch: Callable[[str | None], Awaitable[Any]], convert: Callable[[Any], T]
    ) -> AsyncIterator[T]:
        after: str | None = None
        while True:
            page = await fetch(after)
            for item in page.data:
                yield convert(item)
            if not page.has_more or not page.data:
                return
            after = page.last_id


class Files:
    def __init__(self, t: _Transport) -> None:
        self._t = t

    async def upload(
        self,
        file: rq.FileInput,
        *,
        filename: str | None = None,
        purpose: str = "assistants",
        timeout: float | None = None,
    ) -> File:
        """Uploads a path, bytes, an open binary file or (filename, bytes)."""
        try:
            reply = await self._t.files.UploadFile(
                rq.upload_messages(file, filename=filename, purpose=purpose),
                metadata=self._t.settings.metadata(),
                timeout=timeout if timeout is not None else self._t.settings.timeout,
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return File.from_pb(reply.file)

    async def retrieve(self, file_id: str, *, timeout: float | None = None) -> File:
        request = files_pb2.GetFileRequest(file_id=file_id)
        reply = await self._t.call(self._t.files.GetFile, request, idempotent=True, timeout=timeout)
        return File.from_pb(reply.file)

    def list(
        self, *, purpose: str | None = None, order: str = "desc", page_size: int = 100
    ) -> AsyncIterator[File]:
        """Every file, page after page, lazily."""

        async def fetch(after: str | None) -> Any:
            request = files_pb2.ListFilesRequest(
                limit=page_size, order=order, after=after or "", purpose=purpose or ""
            )
            return await self._t.call(self._t.files.ListFiles, request, idempotent=True)

        return self._t.paginate(fetch, File.from_pb)

    async def delete(self, file_id: str, *, timeout: float | None = None) -> Deleted:
        reply = await self._t.call(
            self._t.files.DeleteFile,
            files_pb2.DeleteFileRequest(file_id=file_id),
            idempotent=False,
            timeout=timeout,
        )
        return Deleted(reply.id, reply.object, reply.deleted)

    async def content(self, file_id: str, *, timeout: float | None = None) -> bytes:
        request = files_pb2.DownloadFileRequest(file_id=file_id)
        return b"".join(
            [m.data async for m in self._t.stream(self._t.files.DownloadFile, request, timeout)]
        )


class VectorStoreFiles:
    def __init__(self, t: _Transport) -> None:
        self._t = t

    async def create(
        self,
        *,
        vector_store_id: str,
        file_id: str,
        attributes: rq.Attributes | None = None,
        chunking_strategy: ChunkingStrategy | None = None,
    ) -> VectorStoreFile:
        request = vs.CreateVectorStoreFileRequest(
            vector_store_id=vector_store_id,
            file_id=file_id,
            attributes=attributes_to_pb(attributes),
            chunking_strategy=chunking_strategy.to_pb() if chunking_strategy else None,
        )
        reply = await self._t.call(self._t.stores.CreateVectorStoreFile, request, idempotent=False)
        return VectorStoreFile.from_pb(reply.vector_store_file)

    async def retrieve(self, file_id: str, *, vector_store_id: str) -> VectorStoreFile:
        request = vs.GetVectorStoreFileRequest(vector_store_id=vector_store_id, file_id=file_id)
        reply = await self._t.call(self._t.stores.GetVectorStoreFile, request, idempotent=True)
        return VectorStoreFile.from_pb(reply.vector_store_file)

    def list(
        self,
        *,
        vector_store_id: str,
        status: str | None = None,
        order: str = "desc",
        page_size: int = 100,
    ) -> AsyncIterator[VectorStoreFile]:
        async def fetch(after: str | None) -> Any:
            request = vs.ListVectorStoreFilesRequest(
                vector_store_id=vector_store_id,
                limit=page_size,
                order=order,
                after=after or "",
                filter=rq.status_filter(status),
            )
            return await self._t.call(self._t.stores.ListVectorStoreFiles, request, idempotent=True)

        return self._t.paginate(fetch, VectorStoreFile.from_pb)

    async def update(
        self, file_id: str, *, vector_store_id: str, attributes: rq.Attributes
    ) -> VectorStoreFile:
        request = vs.UpdateVectorStoreFileRequest(
            vector_store_id=vector_store_id,
            file_id=file_id,
            attributes=attributes_to_pb(attributes),
        )
        reply = await self._t.call(self._t.stores.UpdateVectorStoreFile, request, idempotent=True)
        return VectorStoreFile.from_pb(reply.vector_store_file)

    async def delete(self, file_id: str, *, vector_store_id: str) -> Deleted:
        request = vs.DeleteVectorStoreFileRequest(vector_store_id=vector_store_id, file_id=file_id)
        reply = await self._t.call(self._t.stores.DeleteVectorStoreFile, request, idempotent=False)
        return Deleted(reply.id, reply.object, reply.deleted)

    async def content(self, file_id: str, *, vector_store_id: str) -> builtins.list[str]:
        """The parsed text, one string per chunk (all pages)."""
        texts: builtins.list[str] = []
        page = ""
        while True:
            request = vs.GetVectorStoreFileContentRequest(
                vector_store_id=vector_store_id, file_id=file_id, page=page
            )
            reply = await self._t.call(
                self._t.stores.GetVectorStoreFileContent, request, idempotent=True
            )
            texts += [part.text for part in reply.data]
            if not reply.has_more:
                return texts
            page = reply.next_page


class FileBatches:
    def __init__(self, t: _Transport, files: Files) -> None:
        self._t = t
        self._files = files

    async def create(
        self,
        *,
        vector_store_id: str,
        file_ids: Sequence[str] | None = None,
        files: Sequence[rq.BatchFile] | None = None,
        attributes: rq.Attributes | None = None,
        chunking_strategy: ChunkingStrategy | None = None,
        request_id: str | None = None,
    ) -> FileBatch:
        """Starts a batch. Retried safely on UNAVAILABLE: a request id makes it idempotent."""
        request = rq.create_batch(
            vector_store_id,
            file_ids=file_ids,
            files=files,
            attributes=attributes,
            chunking_strategy=chunking_strategy,
            request_id=request_id,
        )
        reply = await self._t.call(self._t.batches.CreateFileBatch, request, idempotent=True)
        return FileBatch.from_pb(reply.file_batch)

    async def retrieve(self, batch_id: str, *, vector_store_id: str) -> FileBatch:
        request = fb.GetFileBatchRequest(vector_store_id=vector_store_id, batch_id=batch_id)
        reply = await self._t.call(self._t.batches.GetFileBatch, request, idempotent=True)
        return FileBatch.from_pb(reply.file_batch)

    async def cancel(self, batch_id: str, *, vector_store_id: str) -> FileBatch:
        request = fb.CancelFileBatchRequest(vector_store_id=vector_store_id, batch_id=batch_id)
        reply = await self._t.call(self._t.batches.CancelFileBatch, request, idempotent=False)
        return FileBatch.from_pb(reply.file_batch)

    def list_files(
        self,
        batch_id: str,
        *,
        vector_store_id: str,
        status: str | None = None,
        order: str = "desc",
        page_size: int = 100,
    ) -> AsyncIterator[VectorStoreFile]:
        async def fetch(after: str | None) -> Any:
            request = fb.ListFileBatchFilesRequest(
                vector_store_id=vector_store_id,
                batch_id=batch_id,
                limit=page_size,
                order=order,
                after=after or "",
                filter=rq.status_filter(status),
            )
            return await self._t.call(self._t.batches.ListFileBatchFiles, request, idempotent=True)

        return self._t.paginate(fetch, VectorStoreFile.from_pb)

    async def watch(
        self, batch_id: str, *, vector_store_id: str, after_sequence: int = 0
    ) -> AsyncIterator[BatchUpdate]:
        """Live updates until the batch ends. A dropped stream is resumed where it stopped."""
        last = after_sequence
        for attempt in itertools.count():
            request = fb.WatchFileBatchRequest(
                vector_store_id=vector_store_id, batch_id=batch_id, after_sequence=last
            )
            try:
                async for message in self._t.stream(self._t.batches.WatchFileBatch, request):
                    update = BatchUpdate.from_pb(message)
                    last = max(last, update.sequence)
                    yield update
                return
            except UnavailableError:
                if attempt >= self._t.settings.max_retries:
                    raise
                await asyncio.sleep(self._t.settings.backoff(attempt))

    async def poll(self, batch_id: str, *, vector_store_id: str) -> FileBatch:
        """Waits (on WatchFileBatch, not by polling) until the batch ends; returns it."""
        final: FileBatch | None = None
        async for update in self.watch(batch_id, vector_store_id=vector_store_id):
            final = update.batch
        assert final is not None
        return final

    async def create_and_poll(
        self,
        *,
        vector_store_id: str,
        file_ids: Sequence[str] | None = None,
        files: Sequence[rq.BatchFile] | None = None,
        attributes: rq.Attributes | None = None,
        chunking_strategy: ChunkingStrategy | None = None,
        request_id: str | None = None,
    ) -> FileBatch:
        batch = await self.create(
            vector_store_id=vector_store_id,
            file_ids=file_ids,
            files=files,
            attributes=attributes,
            chunking_strategy=chunking_strategy,
            request_id=request_id,
        )
        return await self.poll(batch.id, vector_store_id=vector_store_id)

    async def upload_and_poll(
        self,
        *,
        vector_store_id: str,
        files: Sequence[rq.FileInput],
        attributes: rq.Attributes | None = None,
        chunking_strategy: ChunkingStrategy | None = None,
        max_concurrency: int = 8,
    ) -> FileBatch:
        """Uploads the files (at most ``max_concurrency`` at once), attaches them as one batch
        and waits until it ends. The first upload that fails is raised, and no batch is made."""
        limit = check_limit("max_concurrency", max_concurrency)

        async def upload(file: rq.FileInput) -> str:
            return (await self._files.upload(file)).id

        ids = await async_bounded_map(upload, files, limit)
        return await self.create_and_poll(
            vector_store_id=vector_store_id,
            file_ids=ids,
            attributes=attributes,
            chunking_strategy=chunking_strategy,
        )


class VectorStores:
    def __init__(self, t: _Transport, files: Files) -> None:
        self._t = t
        self.files = VectorStoreFiles(t)
        self.file_batches = FileBatches(t, files)

    async def create(
        self,
        *,
        name: str = "",
        file_ids: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        expires_after: ExpiresAfter | None = None,
        chunking_strategy: ChunkingStrategy | None = None,
        embedding_model: str = "",
        embedding_dimensions: int = 0,
    ) -> VectorStore:
        request = rq.create_store(
            name=name,
            file_ids=file_ids,
            metadata=metadata,
            expires_after=expires_after,
            chunking_strategy=chunking_strategy,
            embedding_model=embedding_model,
            embedding_dimensions=embedding_dimensions,
        )
        reply = await self._t.call(self._t.stores.CreateVectorStore, request, idempotent=False)
        return VectorStore.from_pb(reply.vector_store)

    async def retrieve(self, vector_store_id: str) -> VectorStore:
        request = vs.GetVectorStoreRequest(vector_store_id=vector_store_id)
        reply = await self._t.call(self._t.stores.GetVectorStore, request, idempotent=True)
        return VectorStore.from_pb(reply.vector_store)

    def list(self, *, order: str = "desc", page_size: int = 100) -> AsyncIterator[VectorStore]:
        async def fetch(after: str | None) -> Any:
            request = vs.ListVectorStoresRequest(limit=page_size, order=order, after=after or "")
            return await self._t.call(self._t.stores.ListVectorStores, request, idempotent=True)

        return self._t.paginate(fetch, VectorStore.from_pb)

    async def update(
        self,
        vector_store_id: str,
        *,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        expires_after: ExpiresAfter | None = None,
    ) -> VectorStore:
        request = rq.update_store(
            vector_store_id, name=name, metadata=metadata, expires_after=expires_after
        )
        reply = await self._t.call(self._t.stores.UpdateVectorStore, request, idempotent=True)
        return VectorStore.from_pb(reply.vector_store)

    async def delete(self, vector_store_id: str) -> Deleted:
        request = vs.DeleteVectorStoreRequest(vector_store_id=vector_store_id)
        reply = await self._t.call(self._t.stores.DeleteVectorStore, request, idempotent=False)
        return Deleted(reply.id, reply.object, reply.deleted)

    async def search(
        self,
        vector_store_id: str,
        *,
        query: str | Sequence[str],
        max_num_results: int | None = None,
        filters: rq.Filter | None = None,
        ranker: str | None = None,
        score_threshold: float | None = None,
        rewrite_query: bool = False,
        timeout: float | None = None,
    ) -> SearchResponse:
        request = rq.search(
            vector_store_id,
            query,
            max_num_results=max_num_results,
            filters=filters,
            ranker=ranker,
            score_threshold=score_threshold,
            rewrite_query=rewrite_query,
        )
        reply = await self._t.call(
            self._t.stores.SearchVectorStore, request, idempotent=True, timeout=timeout
        )
        return SearchResponse.from_pb(reply)

    async def create_file_batch(
        self,
        *,
        vector_store_id: str,
        file_ids: Sequence[str] | None = None,
        files: Sequence[rq.BatchFile] | None = None,
        attributes: rq.Attributes | None = None,
        chunking_strategy: ChunkingStrategy | None = None,
        request_id: str | None = None,
    ) -> FileBatch:
        """Same as ``file_batches.create`` (OpenAI's older spelling)."""
        return await self.file_batches.create(
            vector_store_id=vector_store_id,
            file_ids=file_ids,
            files=files,
            attributes=attributes,
            chunking_strategy=chunking_strategy,
            request_id=request_id,
        )


class AsyncClient:
    """A Quiver asyncio client over one ``grpc.aio`` channel.

    ``target``, ``api_key`` and ``on_behalf_of`` default to ``QUIVER_TARGET`` (else
    localhost:50051), ``QUIVER_API_KEY`` and ``QUIVER_ON_BEHALF_OF``. ``timeout`` is the
    default per-call deadline in seconds (None: no deadline); idempotent calls are retried
    ``max_retries`` times on UNAVAILABLE with exponential backoff. TLS: ``tls=True`` uses the
    system's roots, ``root_certificates`` (PEM bytes or a path; env ``QUIVER_TLS_CA``) a CA of
    your own, and ``certificate_chain`` + ``private_key`` (env ``QUIVER_TLS_CERT``,
    ``QUIVER_TLS_KEY``) present a client certificate to a server that requires one (mTLS).
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        api_key: str | None = None,
        on_behalf_of: str | None = None,
        tls: bool | None = None,
        root_certificates: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        timeout: float | None = 60.0,
        max_retries: int = 3,
        retry_backoff: float = 0.2,
    ) -> None:
        self._settings = Settings.resolve(
            target=target,
            api_key=api_key,
            on_behalf_of=on_behalf_of,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            timeout=timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
        )
        self._transport = _Transport(self._settings)
        self.files = Files(self._transport)
        self.vector_stores = VectorStores(self._transport, self.files)

    @property
    def target(self) -> str:
        return self._settings.target

    async def close(self) -> None:
        await self._transport.channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
