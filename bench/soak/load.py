"""The load: client tasks that upload, attach in batches, watch, cancel and search."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from quiver.client import (
    AsyncClient,
    BatchFile,
    BatchUpdate,
    ChunkingStrategy,
    FailedPreconditionError,
    FileBatch,
    QuiverError,
    SearchResponse,
    VectorStore,
)
from quiver.client.types import AttributeValue

from bench.soak.documents import (
    CHUNKINGS,
    KIND_WEIGHTS,
    VALID_KINDS,
    as_stored,
    make_document,
    random_words,
)
from bench.soak.options import Options
from bench.soak.records import KILL_CODES, TERMINAL, Batch, InFlight, Refused, Upload
from bench.soak.server import ServerLoop

T = TypeVar("T")


class Soak:
    """The load's client tasks and everything they were told (what the checks compare)."""

    def __init__(self, options: Options, server: ServerLoop) -> None:
        self.options = options
        self.profile = options.profile
        self.server = server
        self.stores: dict[str, int] = {}  # id → embedding dimensions
        self.uploads: dict[str, Upload] = {}
        self.batches: dict[str, Batch] = {}  # by batch id
        self.sent_request_ids: set[str] = set()
        self.given_up: list[str] = []  # request ids never confirmed
        self.lost_uploads: Counter[str] = Counter()  # by kind
        self.cut: Counter[str] = Counter()  # "Method CODE" of RPCs cut by a kill
        self.unexpected: list[str] = []
        self.refused: Counter[str] = Counter()  # by method: DISK_FULL while the disk was full
        self.disk = server.disk
        self.stream_problems: list[str] = []
        self.idempotency: list[str] = []  # mismatches
        self.idempotency_ok = 0
        self.searches = 0
        self.in_flight = 0
        self.rpc_sent = asyncio.Event()
        self.awaited: str | None = None  # the RPC the chaos task waits for ("" any)
        self.sent = ""  # the one that came
        self.stop_work = asyncio.Event()
        self.watchers: list[asyncio.Task[None]] = []
        self._clients: list[AsyncClient] = []
        self._client_lock = asyncio.Lock()
        self._client_epoch = -1
        self._documents = 0

    # -- calls --------------------------------------------------------------------------------

    async def client(self) -> AsyncClient:
        """The client of this server life, made once the server is SERVING (raises InFlight
        when it is not). A new life gets a new channel, and the old channels are closed
        first: gRPC shares connections (subchannels) between channels to the same target,
        so an old channel left open would hand the new one its reconnect backoff and its
        stale "connection refused"."""
        async with self._client_lock:
            if not self.server.up.is_set():
                raise InFlight("the server is not up")
            if self._client_epoch != self.server.epoch or not self._clients:
                await self.close_clients()  # their calls failed with the server they used
                self._clients.append(
                    AsyncClient(
                        target=self.server.target, timeout=self.profile.rpc_timeout, max_retries=0
                    )
                )
                self._client_epoch = self.server.epoch
            return self._clients[-1]

    async def close_clients(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()

    async def wait_up(self) -> None:
        await asyncio.wait_for(self.server.up.wait(), self.profile.start_timeout * 3)

    async def call(
        self,
        method: str,
        fn: Callable[[AsyncClient], Awaitable[T]],
        expected: tuple[type[QuiverError], ...] = (),
    ) -> T:
        """Runs one RPC. A failure while the server was killed (or not up when it was sent)
        raises InFlight; any other failure is re-raised, and recorded as unexpected unless
        it is one of ``expected``."""
        epoch, up = self.server.epoch, self.server.up.is_set()
        fills, full = self.disk.fills, self.disk.full
        if not up:
            self.cut[f"{method} (not sent: server down)"] += 1
            raise InFlight(method)
        self.in_flight += 1
        if self.awaited is not None and self.awaited in ("", method):
            self.awaited, self.sent = None, method
            self.rpc_sent.set()
        try:
            return await fn(await self.client())
        except QuiverError as exc:
            if epoch != self.server.epoch and exc.code in KILL_CODES:
                self.cut[f"{method} {exc.code.name}"] += 1
                raise InFlight(method) from exc
            if self.disk_full_refusal(exc, fills, full):
                self.refused[method] += 1
                raise Refused(method) from exc
            if not isinstance(exc, expected):
                self.unexpected.append(f"{method}: {exc}")
            raise
        finally:
            self.in_flight -= 1

    def disk_full_refusal(self, exc: QuiverError, fills: int, full: bool) -> bool:
        return (
            exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and exc.reason == "DISK_FULL"
            and self.disk.expects_refusal(fills, full)
        )

    # -- client loops ---------------------------------------------------------------------------

    async def create_stores(self) -> None:
        for i in range(self.profile.stores):

            def create(c: AsyncClient, i: int = i) -> Awaitable[VectorStore]:
                return c.vector_stores.create(
                    name=f"soak-{i}", metadata={"soak": "1"}, embedding_dimensions=512 >> (i % 2)
                )

            store = await self.call("CreateVectorStore", create)
            self.stores[store.id] = store.embedding_dimensions

    def open_batches(self) -> int:
        return sum(1 for b in self.batches.values() if b.watched_final is None)

    async def client_loop(self, n: int) -> None:
        rng = random.Random(f"{self.options.seed}-client-{n}")
        while not self.stop_work.is_set():
            while self.open_batches() >= self.profile.max_open_batches:
                if self.stop_work.is_set():
                    return
                await asyncio.sleep(0.2)
            uploaded: list[Upload] = []
            for _ in range(rng.randint(*self.profile.files_per_batch)):
                if self.stop_work.is_set():
                    break
                upload = await self.upload_one(rng)
                if upload is not None:
                    uploaded.append(upload)
                await asyncio.sleep(rng.uniform(*self.profile.pause))
            if uploaded and not self.stop_work.is_set():
                batch = await self.create_batch(rng, n, uploaded)
                if batch is not None:
                    self.watchers.append(asyncio.create_task(self.watch(batch)))
                    if rng.random() < self.profile.cancel_chance:
                        await asyncio.sleep(rng.uniform(0.0, 0.05))
                        await self.cancel(batch)
            await asyncio.sleep(rng.uniform(*self.profile.pause))

    async def upload_one(self, rng: random.Random) -> Upload | None:
        self._documents += 1
        kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        words = self.profile.large_words if kind == "large" else self.profile.words
        name, data, token = make_document(rng, kind, self._documents, rng.randint(*words))
        digest = hashlib.sha256(data).hexdigest()
        await self.wait_up()
        try:
            file = await self.call("UploadFile", lambda c: c.files.upload((name, data)))
        except InFlight:
            self.lost_uploads[kind] += 1
            return None
        except Refused:
            return None  # never confirmed, so never counted
        except QuiverError:
            return None  # recorded as unexpected
        if file.bytes != len(data) or file.sha256 != digest or file.filename != name:
            self.unexpected.append(
                f"UploadFile {name}: answered bytes={file.bytes} sha256={file.sha256[:12]} "
                f"filename={file.filename!r}, sent {len(data)} bytes sha256={digest[:12]}"
            )
        upload = Upload(
            file.id, kind, name, digest, len(data), token if kind in VALID_KINDS else None
        )
        self.uploads[file.id] = upload
        return upload

    async def create_batch(self, rng: random.Random, n: int, uploads: list[Upload]) -> Batch | None:
        store_id = rng.choice(sorted(self.stores))
        tag = f"c{n}-{rng.getrandbits(48):012x}"
        request_id = f"soak-{tag}"
        chunking = rng.choice(CHUNKINGS)
        attributes: dict[str, dict[str, AttributeValue]] = {}
        chunkings: dict[str, ChunkingStrategy] = {}
        specs: list[BatchFile] | None = None
        batch_attributes: dict[str, AttributeValue] | None = None
        if rng.random() < 0.5:  # file_ids with batch-level attributes and chunking
            batch_attributes = {"soak_batch": tag, "soak_client": n, "soak_even": n % 2 == 0}
            for u in uploads:
                attributes[u.file_id] = dict(batch_attributes)
                chunkings[u.file_id] = as_stored(chunking)
        else:  # files, each with its own
            specs = []
            for i, u in enumerate(uploads):
                own: dict[str, AttributeValue] = {"soak_batch": tag, "soak_kind": u.kind, "i": i}
                strategy = rng.choice(CHUNKINGS)
                specs.append(BatchFile(u.file_id, attributes=own, chunking_strategy=strategy))
                attributes[u.file_id] = own
                chunkings[u.file_id] = as_stored(strategy)
        file_ids = [u.file_id for u in uploads]

        def create(c: AsyncClient) -> Awaitable[FileBatch]:
            return c.vector_stores.file_batches.create(
                vector_store_id=store_id,
                file_ids=file_ids if specs is None else None,
                files=specs,
                attributes=batch_attributes,
                chunking_strategy=chunking if specs is None else None,
                request_id=request_id,
            )

        self.sent_request_ids.add(request_id)
        lost = False
        first_epoch: int | None = None  # the batch may date from the first attempt
        for _ in range(30):
            await self.wait_up()
            if first_epoch is None:
                first_epoch = self.server.epoch
            try:
                created = await self.call("CreateFileBatch", create)
                break
            except InFlight:
                lost = True  # the reply was lost: retry with the same request id
            except Refused:  # not created: the same request once the disk has room again
                await self.disk.free.wait()
                await asyncio.sleep(0.2)
            except QuiverError:
                self.given_up.append(request_id)
                return None
        else:
            self.given_up.append(request_id)
            return None
        batch = Batch(
            batch_id=created.id,
            request_id=request_id,
            store_id=store_id,
            file_ids=file_ids,
            attributes=attributes,
            chunking=chunkings,
            created_epoch=first_epoch if first_epoch is not None else self.server.epoch,
            reply_lost=lost,
            create=create,
        )
        if created.id in self.batches:
            self.idempotency.append(f"{request_id}: a new request gave existing {created.id}")
        self.batches[created.id] = batch
        if lost:  # the same request id once more: the same batch again
            await self.check_same_batch(batch, create)
        return batch

    async def check_same_batch(
        self, batch: Batch, create: Callable[[AsyncClient], Awaitable[FileBatch]]
    ) -> None:
        for _ in range(30):
            await self.wait_up()
            try:
                again = await self.call("CreateFileBatch", create)
            except InFlight:
                continue
            except Refused:
                await self.disk.free.wait()
                continue
            except QuiverError as exc:
                self.idempotency.append(f"{batch.request_id}: the retry failed: {exc}")
                return
            if again.id == batch.batch_id:
                self.idempotency_ok += 1
            else:
                self.idempotency.append(
                    f"{batch.request_id}: gave {batch.batch_id}, then {again.id}"
                )
            return

    async def cancel(self, batch: Batch) -> None:
        await self.wait_up()
        try:
            await self.call(
                "CancelFileBatch",
                lambda c: c.vector_stores.file_batches.cancel(
                    batch.batch_id, vector_store_id=batch.store_id
                ),
                expected=(FailedPreconditionError,),  # the batch has already ended
            )
            batch.cancel = "confirmed"
        except InFlight:
            batch.cancel = "lost"
        except Refused:
            batch.cancel = "disk-full"  # refused: the batch must not end cancelled
        except FailedPreconditionError:
            batch.cancel = "refused"
        except QuiverError:
            batch.cancel = "lost"

    async def watch(self, batch: Batch) -> None:
        """Follows the batch to its end across kills, resuming after the last sequence."""
        failures = 0
        while failures < 5:
            await self.wait_up()
            epoch = self.server.epoch
            fills, full = self.disk.fills, self.disk.full
            try:
                client = await self.client()
                async for update in client.vector_stores.file_batches.watch(
                    batch.batch_id,
                    vector_store_id=batch.store_id,
                    after_sequence=batch.last_sequence,
                ):
                    self.on_update(batch, update)
                    if update.batch.done:
                        batch.terminal_epoch = self.server.epoch
                        return
                self.stream_problems.append(
                    f"{batch.batch_id}: WatchFileBatch ended OK without a terminal message"
                )
                return
            except InFlight:
                continue
            except QuiverError as exc:
                if epoch != self.server.epoch and exc.code in KILL_CODES:
                    batch.reconnects += 1
                    self.cut[f"WatchFileBatch {exc.code.name}"] += 1
                    continue
                if self.disk_full_refusal(exc, fills, full):
                    self.refused["WatchFileBatch"] += 1
                    await self.disk.free.wait()
                    continue
                self.unexpected.append(f"WatchFileBatch {batch.batch_id}: {exc}")
                failures += 1
                await asyncio.sleep(0.5)

    def on_update(self, batch: Batch, update: BatchUpdate) -> None:
        where = f"{batch.batch_id} seq {update.sequence}"
        if update.snapshot and update.sequence < batch.last_sequence:
            self.stream_problems.append(
                f"{where}: snapshot older than the change {batch.last_sequence} already seen"
            )
        if not update.snapshot and update.sequence <= batch.last_sequence:
            self.stream_problems.append(f"{where}: change after {batch.last_sequence} sent again")
        batch.last_sequence = max(batch.last_sequence, update.sequence)
        for f in update.files:
            before = batch.reported.get(f.file_id)
            if before is not None and before != f.status:
                self.stream_problems.append(
                    f"{where}: {f.file_id} was reported {before}, now {f.status}"
                )
            if f.status in TERMINAL:
                batch.reported[f.file_id] = f.status
        if batch.watched_final is not None and not update.batch.done:
            self.stream_problems.append(
                f"{where}: batch was reported {batch.watched_final.status}, now in_progress"
            )
        if update.batch.done:
            batch.watched_final = update.batch

    async def search_loop(self) -> None:
        rng = random.Random(f"{self.options.seed}-search")
        while not self.stop_work.is_set():
            await self.wait_up()
            store_id = rng.choice(sorted(self.stores))
            tokens = [u.token for u in self.uploads.values() if u.token]
            query = (
                rng.choice(tokens)
                if tokens and rng.random() < 0.5
                else " ".join(random_words(rng, rng.randint(1, 5)))
            )
            filters: dict[str, object] | None = (
                {"type": "eq", "key": "soak_even", "value": True} if rng.random() < 0.2 else None
            )

            def search(
                c: AsyncClient,
                store_id: str = store_id,
                query: str = query,
                filters: dict[str, object] | None = filters,
            ) -> Awaitable[SearchResponse]:
                return c.vector_stores.search(
                    store_id, query=query, max_num_results=10, filters=filters
                )

            with contextlib.suppress(InFlight, Refused, QuiverError):
                await self.call("SearchVectorStore", search)
                self.searches += 1
            await asyncio.sleep(rng.uniform(0.05, 0.3))

    async def unfinished_batch(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_batches():
                return True
            await asyncio.sleep(0.005)
        return False

    async def next_rpc(self, method: str, timeout: float) -> str | None:
        """Waits until an RPC (``method``, or any when empty) is sent; returns its name,
        or None after ``timeout``."""
        self.rpc_sent.clear()
        self.awaited = method
        try:
            await asyncio.wait_for(self.rpc_sent.wait(), timeout)
        except TimeoutError:
            return None
        finally:
            self.awaited = None
        return self.sent
