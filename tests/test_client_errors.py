"""How the client turns failed RPCs into typed exceptions (``from_rpc_error``), and which calls
it retries.

Real failures from the in-process server where it can produce them; a tiny fake
``grpc.RpcError`` (with a google.rpc.Status in ``grpc-status-details-bin``) for the rest.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from quiver.client import (
    AlreadyExistsError,
    AsyncClient,
    AuthenticationError,
    CancelledError,
    Client,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    QuiverError,
    ResourceExhaustedError,
    UnavailableError,
    UnimplementedError,
)
from quiver.client.errors import from_rpc_error
from quiver.server.config import Settings
from quiver.v1 import file_batches_pb2, files_pb2, vector_stores_pb2

from tests.support.inproc import Running

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
MAX_FILE_BYTES = 4096
DETAILS_KEY = "grpc-status-details-bin"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's server: tiny upload limit and ingest queue, to hit RESOURCE_EXHAUSTED."""
    return replace(settings, max_file_bytes=MAX_FILE_BYTES, max_queued_files=2)


@pytest.fixture
async def client(running: Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        target=running.target, api_key=running.alice.key, timeout=30, max_retries=0
    ) as c:
        yield c


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def raw_error(call: Any) -> aio.AioRpcError:
    """The AioRpcError a raw stub call fails with."""
    with pytest.raises(aio.AioRpcError) as info:
        await call
    return info.value


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking client call off the loop the in-process server runs on."""
    return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), 30)


def check(
    error: QuiverError,
    cls: type[QuiverError],
    code: grpc.StatusCode,
    reason: str,
    *,
    server: bool = True,
) -> None:
    assert type(error) is cls, (type(error), error)
    assert error.code == code
    assert error.reason == reason
    assert error.message, "an empty message is no help to anyone"
    assert code.name in str(error)
    if server:  # the server names the request it logged the failure under
        assert error.request_id
        assert error.request_id in str(error)


# -- real failures -----------------------------------------------------------------------------


async def test_invalid_argument_has_field_violations_and_reason(
    running: Running, client: AsyncClient
) -> None:
    a = running.alice
    store = await client.vector_stores.create(name="x")
    request = vector_stores_pb2.SearchVectorStoreRequest(
        vector_store_id=store.id, query=["q"], max_num_results=500
    )
    raw = await raw_error(a.stores.SearchVectorStore(request, metadata=a.metadata))
    error = from_rpc_error(raw)
    check(error, InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert [v.field for v in error.field_violations] == ["max_num_results"]
    assert isinstance(error.field_violations[0], FieldViolation)
    assert "50" in error.field_violations[0].description

    with pytest.raises(InvalidArgumentError) as info:
        await client.vector_stores.create(metadata={f"k{i}": "v" for i in range(17)})
    check(info.value, InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert info.value.field_violations
    assert all(v.field.startswith("metadata") for v in info.value.field_violations)

    with pytest.raises(InvalidArgumentError) as info:
        await client.vector_stores.file_batches.create(
            vector_store_id=store.id, file_ids=["file-x"], attributes={"k" * 65: "v"}
        )
    assert any("attributes" in v.field for v in info.value.field_violations)

    def sync_invalid() -> None:
        with Client(target=running.target, api_key=running.alice.key, max_retries=0) as c:
            c.vector_stores.search(store.id, query="q", max_num_results=500)

    with pytest.raises(InvalidArgumentError) as info:
        await in_thread(sync_invalid)
    assert [v.field for v in info.value.field_violations] == ["max_num_results"]


async def test_not_found(running: Running, client: AsyncClient) -> None:
    a = running.alice
    request = vector_stores_pb2.GetVectorStoreRequest(vector_store_id="vs_nope")
    raw = await raw_error(a.stores.GetVectorStore(request, metadata=a.metadata))
    error = from_rpc_error(raw)
    check(error, NotFoundError, grpc.StatusCode.NOT_FOUND, "VECTOR_STORE_NOT_FOUND")
    assert "vs_nope" in error.message
    with pytest.raises(NotFoundError) as info:
        await client.files.retrieve("file-nope")
    check(info.value, NotFoundError, grpc.StatusCode.NOT_FOUND, "FILE_NOT_FOUND")
    with pytest.raises(NotFoundError) as info:
        await client.files.content("file-nope")  # a server stream fails the same way
    assert info.value.reason == "FILE_NOT_FOUND"
    store = await client.vector_stores.create(name="x")
    with pytest.raises(NotFoundError) as info:
        await client.vector_stores.file_batches.create(
            vector_store_id=store.id, file_ids=["file-missing"]
        )
    assert "file-missing" in info.value.message
    with pytest.raises(NotFoundError) as info:
        await in_thread(_sync_retrieve_store, running, "vs_nope")
    check(info.value, NotFoundError, grpc.StatusCode.NOT_FOUND, "VECTOR_STORE_NOT_FOUND")


def _sync_retrieve_store(running: Running, store_id: str) -> Any:
    with Client(target=running.target, api_key=running.alice.key, max_retries=0) as c:
        return c.vector_stores.retrieve(store_id)


async def test_not_found_message_with_non_ascii_keeps_its_details(client: AsyncClient) -> None:
    with pytest.raises(NotFoundError) as info:
        await client.vector_stores.retrieve("vs_ünïcødé")
    assert info.value.reason == "VECTOR_STORE_NOT_FOUND"
    assert "vs_ünïcødé" in info.value.message


async def test_failed_precondition(running: Running, client: AsyncClient) -> None:
    store = await client.vector_stores.create(name="x")
    f = await client.files.upload(("a.txt", b"hello there"))
    batches = client.vector_stores.file_batches
    batch = await batches.create_and_poll(vector_store_id=store.id, file_ids=[f.id])
    assert batch.status == "completed"
    a = running.alice
    request = file_batches_pb2.CancelFileBatchRequest(vector_store_id=store.id, batch_id=batch.id)
    raw = await raw_error(a.batches.CancelFileBatch(request, metadata=a.metadata))
    error = from_rpc_error(raw)
    check(error, FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION, "FILE_BATCH_ENDED")
    with pytest.raises(FailedPreconditionError) as info:
        await batches.cancel(batch.id, vector_store_id=store.id)
    assert info.value.reason == "FILE_BATCH_ENDED"


async def test_resource_exhausted(running: Running, client: AsyncClient) -> None:
    with pytest.raises(ResourceExhaustedError) as info:
        await client.files.upload(("big.txt", b"x" * (MAX_FILE_BYTES + 1)))
    check(info.value, ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED, "FILE_TOO_LARGE")
    assert str(MAX_FILE_BYTES) in info.value.message
    assert (await client.files.upload(("ok.txt", b"x" * MAX_FILE_BYTES))).bytes == MAX_FILE_BYTES

    store = await client.vector_stores.create(name="x")
    ids = [(await client.files.upload((f"{i}.txt", b"text"))).id for i in range(3)]
    with pytest.raises(ResourceExhaustedError) as info:  # max_queued_files=2
        await client.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=ids)
    check(
        info.value, ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED, "INGEST_QUEUE_FULL"
    )


async def test_unauthenticated(running: Running) -> None:
    a = running.alice
    request = files_pb2.ListFilesRequest()
    raw = await raw_error(
        a.files.ListFiles(request, metadata=(("authorization", "Bearer qk_wrong"),))
    )
    error = from_rpc_error(raw)
    check(error, AuthenticationError, grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY")
    raw = await raw_error(a.files.ListFiles(request))
    assert from_rpc_error(raw).reason == "MISSING_API_KEY"
    async with AsyncClient(target=running.target, api_key="qk_wrong", max_retries=0) as wrong:
        with pytest.raises(AuthenticationError) as info:
            await wrong.vector_stores.retrieve("vs_x")
        assert info.value.reason == "INVALID_API_KEY"
    with pytest.raises(AuthenticationError):
        await in_thread(_sync_with_key, running.target, "qk_wrong")


def _sync_with_key(target: str, key: str) -> Any:
    with Client(target=target, api_key=key, max_retries=0) as c:
        return c.files.upload(b"data")


async def test_already_exists_request_id_reused_on_another_store(
    running: Running, client: AsyncClient
) -> None:
    first = await client.vector_stores.create(name="one")
    second = await client.vector_stores.create(name="two")
    f = await client.files.upload(("a.txt", b"hello"))
    batches = client.vector_stores.file_batches
    made = await batches.create(vector_store_id=first.id, file_ids=[f.id], request_id="req-1")
    same = await batches.create(vector_store_id=first.id, file_ids=[f.id], request_id="req-1")
    assert same.id == made.id
    with pytest.raises(AlreadyExistsError) as info:
        await batches.create(vector_store_id=second.id, file_ids=[f.id], request_id="req-1")
    check(info.value, AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert made.id in info.value.message
    await batches.poll(made.id, vector_store_id=first.id)


async def test_unavailable_on_a_closed_port() -> None:
    async with AsyncClient(target=f"127.0.0.1:{closed_port()}", max_retries=0, timeout=10) as c:
        with pytest.raises(UnavailableError) as info:
            await c.vector_stores.retrieve("vs_x")
    check(info.value, UnavailableError, grpc.StatusCode.UNAVAILABLE, "", server=False)
    with Client(target=f"127.0.0.1:{closed_port()}", max_retries=0, timeout=10) as sync:
        with pytest.raises(UnavailableError):
            sync.files.upload(b"x")
        with pytest.raises(UnavailableError):
            list(sync.vector_stores.list())
        with pytest.raises(UnavailableError):
            list(sync.vector_stores.file_batches.watch("vsfb_x", vector_store_id="vs_x"))


class SlowReader(io.RawIOBase):
    """A binary stream that is not seekable and takes its time to produce data."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.name = "slow.txt"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        time.sleep(self.delay)
        return 0  # then end of file


async def test_deadline_exceeded(running: Running) -> None:
    a = running.alice

    async def slow_upload() -> AsyncIterator[files_pb2.UploadFileRequest]:
        yield files_pb2.UploadFileRequest(filename="slow.txt", purpose="assistants", data=b"x")
        await asyncio.sleep(1.0)
        yield files_pb2.UploadFileRequest(data=b"y")

    raw = await raw_error(a.files.UploadFile(slow_upload(), metadata=a.metadata, timeout=0.2))
    error = from_rpc_error(raw)
    check(error, DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED, "", server=False)

    def sync_upload() -> Any:
        with Client(target=running.target, api_key=a.key, max_retries=0) as c:
            return c.files.upload(cast(BinaryIO, SlowReader(0.6)), timeout=0.2)

    with pytest.raises(DeadlineExceededError) as info:
        await in_thread(sync_upload)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_unimplemented(running: Running) -> None:
    method = running.channel.unary_unary(
        "/quiver.v1.FileService/NoSuchMethod",
        request_serializer=files_pb2.GetFileRequest.SerializeToString,
        response_deserializer=files_pb2.GetFileResponse.FromString,
    )
    raw = await raw_error(method(files_pb2.GetFileRequest(), metadata=running.alice.metadata))
    error = from_rpc_error(raw)
    assert type(error) is UnimplementedError
    assert error.code == grpc.StatusCode.UNIMPLEMENTED


async def test_local_file_errors_are_raised_as_they_are(
    running: Running, client: AsyncClient, tmp_path: Path
) -> None:
    """A path that cannot be read is the caller's OSError, not a server error (and, for the
    async client, not an asyncio.CancelledError)."""
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError):
        await client.files.upload(missing)
    with pytest.raises(FileNotFoundError):
        await client.vector_stores.file_batches.upload_and_poll(
            vector_store_id="vs_x", files=[missing]
        )

    def sync_upload() -> Any:
        with Client(target=running.target, api_key=running.alice.key, max_retries=0) as c:
            return c.files.upload(str(missing))

    with pytest.raises(FileNotFoundError):
        await in_thread(sync_upload)
    assert await collect(client.files.list()) == []  # nothing half-uploaded


async def collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


# -- every code, with a fake RpcError ----------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    """What a failed call looks like to ``from_rpc_error``."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str | None,
        trailing: tuple[tuple[str, str | bytes], ...] | None = (),
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details

    def trailing_metadata(self) -> Any:  # grpc-stubs types it without the None case
        return self._trailing


def rich(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    request_id: str = "",
    violations: tuple[tuple[str, str], ...] = (),
    status_message: str | None = None,
) -> FakeRpcError:
    details: list[Any] = []
    info = error_details_pb2.ErrorInfo(reason=reason, domain="quiver")
    if request_id:
        info.metadata["request_id"] = request_id
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    status = status_pb2.Status(
        code=code.value[0],
        message=message if status_message is None else status_message,
        details=details,
    )
    trailing = (("request-id", "ignored"), (DETAILS_KEY, status.SerializeToString()))
    return FakeRpcError(code, message, trailing)


EXPECTED: dict[grpc.StatusCode, type[QuiverError]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNKNOWN: InternalServerError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: FailedPreconditionError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalServerError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: InternalServerError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
}


def test_every_failing_code_is_mapped() -> None:
    assert set(EXPECTED) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize("code", list(EXPECTED), ids=lambda c: c.name)
def test_fake_error_maps_code_and_reads_error_info(code: grpc.StatusCode) -> None:
    fake = rich(code, f"it went wrong: {code.name}", reason=f"R_{code.name}", request_id="rq-42")
    error = from_rpc_error(fake)
    assert type(error) is EXPECTED[code]
    assert isinstance(error, QuiverError) and isinstance(error, Exception)
    assert error.code == code
    assert error.message == f"it went wrong: {code.name}"
    assert error.reason == f"R_{code.name}"
    assert error.request_id == "rq-42"
    assert error.field_violations == []
    assert str(error) == f"{code.name}: it went wrong: {code.name} (request id rq-42)"


def test_fake_error_reads_bad_request_violations() -> None:
    fake = rich(
        grpc.StatusCode.INVALID_ARGUMENT,
        "limit: must be 1..100; order: asc or desc",
        reason="INVALID_ARGUMENT",
        violations=(("limit", "must be 1..100"), ("order", "asc or desc")),
    )
    error = from_rpc_error(fake)
    assert isinstance(error, InvalidArgumentError)
    assert error.field_violations == [
        FieldViolation("limit", "must be 1..100"),
        FieldViolation("order", "asc or desc"),
    ]
    assert error.request_id == "" and str(error).endswith("asc or desc")


def test_fake_error_without_details() -> None:
    plain = from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone"))
    assert type(plain) is NotFoundError
    assert (plain.message, plain.reason, plain.request_id) == ("gone", "", "")
    no_trailers = from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "boom", None))
    assert type(no_trailers) is InternalServerError and no_trailers.message == "boom"
    no_message = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, None))
    assert type(no_message) is UnavailableError
    assert no_message.message == "UNAVAILABLE"


def test_fake_error_whose_status_disagrees_still_maps_its_code() -> None:
    # e.g. a proxy that rewrote the message: the details no longer match the call
    fake = rich(
        grpc.StatusCode.NOT_FOUND,
        "rewritten by a proxy",
        reason="VECTOR_STORE_NOT_FOUND",
        status_message="no vector store with id 'vs_x'",
    )
    error = from_rpc_error(fake)
    assert type(error) is NotFoundError
    assert error.message == "rewritten by a proxy"


# -- retries -----------------------------------------------------------------------------------


class Counting:
    """Wraps a stub method and counts the calls made through it."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.method(*args, **kwargs)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Every time.sleep (the sync client's backoff sleeps), recorded and really slept."""
    recorded: list[float] = []
    real = time.sleep

    def sleep(seconds: float) -> None:
        recorded.append(seconds)
        real(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    yield recorded


def test_idempotent_call_to_unreachable_target_is_retried(sleeps: list[float]) -> None:
    with Client(
        target=f"127.0.0.1:{closed_port()}", max_retries=3, retry_backoff=0.02, timeout=10
    ) as c:
        transport: Any = c._transport
        get = transport.files.GetFile = Counting(transport.files.GetFile)
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            c.files.retrieve("file-x")
        elapsed = time.monotonic() - started
        assert get.calls == 4  # the call and max_retries=3 retries
        assert sleeps == [0.02, 0.04, 0.08]  # exponential backoff
        assert elapsed >= sum(sleeps)

        sleeps.clear()
        listing = transport.stores.ListVectorStores = Counting(transport.stores.ListVectorStores)
        with pytest.raises(UnavailableError):
            list(c.vector_stores.list())
        assert listing.calls == 4
        batch = transport.batches.CreateFileBatch = Counting(transport.batches.CreateFileBatch)
        with pytest.raises(UnavailableError):  # made idempotent by its request id
            c.vector_stores.file_batches.create(vector_store_id="vs_x", file_ids=["file-x"])
        assert batch.calls == 4


def test_non_idempotent_calls_are_not_retried(sleeps: list[float]) -> None:
    with Client(
        target=f"127.0.0.1:{closed_port()}", max_retries=3, retry_backoff=0.02, timeout=10
    ) as c:
        transport: Any = c._transport
        upload = transport.files.UploadFile = Counting(transport.files.UploadFile)
        with pytest.raises(UnavailableError):
            c.files.upload(("a.txt", b"data"))
        assert upload.calls == 1
        create = transport.stores.CreateVectorStore = Counting(transport.stores.CreateVectorStore)
        with pytest.raises(UnavailableError):
            c.vector_stores.create(name="x")
        assert create.calls == 1
        delete = transport.files.DeleteFile = Counting(transport.files.DeleteFile)
        with pytest.raises(UnavailableError):
            c.files.delete("file-x")
        assert delete.calls == 1
        assert sleeps == []


def test_no_retries_when_max_retries_is_zero(sleeps: list[float]) -> None:
    with Client(target=f"127.0.0.1:{closed_port()}", max_retries=0, timeout=10) as c:
        transport: Any = c._transport
        get = transport.files.GetFile = Counting(transport.files.GetFile)
        with pytest.raises(UnavailableError):
            c.files.retrieve("file-x")
        assert get.calls == 1 and sleeps == []


def test_retry_recovers_after_transient_unavailable(sleeps: list[float]) -> None:
    reply = files_pb2.GetFileResponse(
        file=files_pb2.File(id="file-ok", bytes=3, filename="a.txt", purpose="assistants")
    )
    attempts: list[int] = []

    def flaky(request: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "draining")
        return reply

    with Client(target="127.0.0.1:1", max_retries=3, retry_backoff=0.01) as c:
        transport: Any = c._transport
        transport.files.GetFile = flaky
        got = c.files.retrieve("file-ok")
    assert got.id == "file-ok" and got.filename == "a.txt"
    assert len(attempts) == 3 and sleeps == [0.01, 0.02]


def test_other_errors_are_not_retried(sleeps: list[float]) -> None:
    calls: list[int] = []

    def missing(request: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "no such file")

    with Client(target="127.0.0.1:1", max_retries=3, retry_backoff=0.01) as c:
        transport: Any = c._transport
        transport.files.GetFile = missing
        with pytest.raises(NotFoundError):
            c.files.retrieve("file-x")
    assert calls == [1] and sleeps == []


async def test_async_retries_idempotent_calls_only() -> None:
    async with AsyncClient(
        target=f"127.0.0.1:{closed_port()}", max_retries=2, retry_backoff=0.02, timeout=10
    ) as c:
        transport: Any = c._transport
        get = transport.files.GetFile = Counting(transport.files.GetFile)
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            await c.files.retrieve("file-x")
        assert get.calls == 3
        assert time.monotonic() - started >= 0.02 + 0.04
        upload = transport.files.UploadFile = Counting(transport.files.UploadFile)
        with pytest.raises(UnavailableError):
            await c.files.upload(b"data")
        assert upload.calls == 1
        create = transport.stores.CreateVectorStore = Counting(transport.stores.CreateVectorStore)
        with pytest.raises(UnavailableError):
            await c.vector_stores.create(name="x")
        assert create.calls == 1
        watch = transport.batches.WatchFileBatch = Counting(transport.batches.WatchFileBatch)
        with pytest.raises(UnavailableError):
            async for _ in c.vector_stores.file_batches.watch("vsfb_x", vector_store_id="vs_x"):
                pass
        assert watch.calls == 3  # a watch reconnects too
