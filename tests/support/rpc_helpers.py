"""Helpers shared by the RPC tests: uploads, downloads, error details and cursor paging."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_status import rpc_status
from quiver.v1 import files_pb2

from tests.support.inproc import Tenant

PIECE = 64 * 1024
T = TypeVar("T")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload_messages(
    filename: str,
    data: bytes,
    *,
    piece: int = PIECE,
    purpose: str = "",
    sha256: str = "",
    data_in_first: bool = False,
) -> AsyncIterator[files_pb2.UploadFileRequest]:
    """An upload stream: a header message, then ``data`` in messages of ``piece`` bytes.

    With ``data_in_first`` the first piece travels in the header message itself.
    """
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    header = files_pb2.UploadFileRequest(filename=filename, purpose=purpose, sha256=sha256)
    if data_in_first and pieces:
        header.data = pieces.pop(0)
    yield header
    for chunk in pieces:
        yield files_pb2.UploadFileRequest(data=chunk)


async def iter_async(messages: Sequence[T]) -> AsyncIterator[T]:
    for message in messages:
        yield message


async def upload(
    tenant: Tenant,
    filename: str,
    data: bytes,
    *,
    piece: int = PIECE,
    purpose: str = "",
    sha256: str = "",
    data_in_first: bool = False,
) -> files_pb2.File:
    """Uploads ``data`` as ``tenant`` and returns the stored file."""
    reply = await tenant.files.UploadFile(
        upload_messages(
            filename,
            data,
            piece=piece,
            purpose=purpose,
            sha256=sha256,
            data_in_first=data_in_first,
        ),
        metadata=tenant.metadata,
    )
    return reply.file


async def download(tenant: Tenant, file_id: str) -> tuple[files_pb2.File, bytes, list[int]]:
    """Downloads a file: its metadata (first message), its bytes, and each data piece's size.

    Checks the stream's shape on the way: metadata first and only first, data after it.
    """
    call = tenant.files.DownloadFile(
        files_pb2.DownloadFileRequest(file_id=file_id), metadata=tenant.metadata
    )
    first: files_pb2.File | None = None
    parts: list[bytes] = []
    async for message in call:
        if first is None:
            assert message.HasField("file"), "the first DownloadFile message must carry the file"
            first = message.file
        else:
            assert not message.HasField("file"), "only the first message may carry the file"
        if message.data:
            parts.append(message.data)
    assert first is not None, "DownloadFile sent no message"
    return first, b"".join(parts), [len(p) for p in parts]


async def list_file_ids(tenant: Tenant, purpose: str = "") -> list[str]:
    reply = await tenant.files.ListFiles(
        files_pb2.ListFilesRequest(limit=100, order="asc", purpose=purpose),
        metadata=tenant.metadata,
    )
    return [f.id for f in reply.data]


class PacedUpload:
    """An upload stream the test feeds message by message (``close`` ends it)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[files_pb2.UploadFileRequest | None] = asyncio.Queue()

    def send(self, message: files_pb2.UploadFileRequest) -> None:
        self._queue.put_nowait(message)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def messages(self) -> AsyncIterator[files_pb2.UploadFileRequest]:
        while (message := await self._queue.get()) is not None:
            yield message


UploadCall = aio.StreamUnaryCall[files_pb2.UploadFileRequest, files_pb2.UploadFileResponse]


async def start_paced_upload(
    tenant: Tenant,
    data_dir: Path,
    first: bytes,
    filename: str = "inflight.bin",
    deadline: float | None = None,
) -> tuple[PacedUpload, UploadCall]:
    """Starts an upload, sends its first message, and waits until the server is receiving it.

    The server opens a temp file under ``blobs/tmp`` when the first message arrives: that is
    the signal that the RPC is in flight on the server side.
    """
    paced = PacedUpload()
    paced.send(files_pb2.UploadFileRequest(filename=filename, data=first))
    call = tenant.files.UploadFile(paced.messages(), metadata=tenant.metadata, timeout=deadline)
    await wait_for(lambda: len(tmp_files(data_dir)) == 1)
    return paced, call


# -- error details -----------------------------------------------------------------------


def rpc_error(exc: BaseException) -> aio.AioRpcError:
    assert isinstance(exc, aio.AioRpcError), f"expected an RPC error, got {exc!r}"
    return exc


def status_of(exc: BaseException) -> status_pb2.Status:
    """The ``google.rpc.Status`` the server attached to the error (fails if there is none)."""
    # AioRpcError has everything from_call reads (code, details, trailing_metadata).
    status = rpc_status.from_call(cast(grpc.Call, rpc_error(exc)))
    assert status is not None, f"no google.rpc.Status details on {exc!r}"
    return status


def field_violations(exc: BaseException) -> list[tuple[str, str]]:
    """(field, description) of every BadRequest field violation in the error's details."""
    out: list[tuple[str, str]] = []
    for detail in status_of(exc).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(str(v.field), str(v.description)) for v in bad.field_violations]
    return out


def violated_fields(exc: BaseException) -> list[str]:
    return [field for field, _ in field_violations(exc)]


def error_info(exc: BaseException) -> error_details_pb2.ErrorInfo:
    """The error's ErrorInfo detail (fails if there is not exactly one)."""
    found: list[error_details_pb2.ErrorInfo] = []
    for detail in status_of(exc).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found.append(info)
    assert len(found) == 1, f"expected one ErrorInfo, found {len(found)} on {exc!r}"
    return found[0]


def error_reason(exc: BaseException) -> str:
    """ErrorInfo.reason, after checking that its domain is "quiver"."""
    info = error_info(exc)
    assert info.domain == "quiver", info
    return str(info.reason)


# -- disk --------------------------------------------------------------------------------


def blob_files(data_dir: Path) -> list[str]:
    """Names of the content blobs under ``data_dir/blobs`` (outside ``tmp/``)."""
    root = data_dir / "blobs"
    return sorted(
        p.name for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "tmp"
    )


def tmp_files(data_dir: Path) -> list[str]:
    tmp = data_dir / "blobs" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Polls ``predicate`` on the event loop until it holds; fails after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, f"condition not met within {within} s"
        await asyncio.sleep(0.005)


# -- cursor pagination -------------------------------------------------------------------


@dataclass(frozen=True)
class PageView:
    """One page of any List RPC, reduced to what the cursor contract talks about."""

    ids: list[str]
    first_id: str
    last_id: str
    has_more: bool


ListPage = Callable[[int, str, str, str], Awaitable[PageView]]
"""(limit, order, after, before) → the page."""


def check_envelope(page: PageView) -> None:
    assert page.first_id == (page.ids[0] if page.ids else "")
    assert page.last_id == (page.ids[-1] if page.ids else "")


async def walk_after(list_page: ListPage, order: str, limit: int) -> list[PageView]:
    """Pages from the start of ``order``, each next one ``after`` the previous last_id."""
    pages = [await list_page(limit, order, "", "")]
    while pages[-1].has_more:
        assert len(pages) < 100, "has_more never became false"
        pages.append(await list_page(limit, order, pages[-1].last_id, ""))
    return pages


async def walk_before(list_page: ListPage, order: str, limit: int, start: str) -> list[PageView]:
    """Pages going back from ``start``, each next one ``before`` the previous first_id."""
    pages = [await list_page(limit, order, "", start)]
    while pages[-1].has_more:
        assert len(pages) < 100, "has_more never became false"
        pages.append(await list_page(limit, order, "", pages[-1].first_id))
    return pages


async def check_cursor_pagination(list_page: ListPage, ids_asc: Sequence[str]) -> None:
    """Checks OpenAI-style cursors over a list whose oldest-first ids are ``ids_asc``.

    Needs 7 objects: pages of 3 are 3 + 3 + 1 in both orders.
    """
    assert len(ids_asc) == 7
    for order, expected in (("asc", list(ids_asc)), ("desc", list(reversed(ids_asc)))):
        whole = await list_page(100, order, "", "")
        assert whole.ids == expected, order
        assert not whole.has_more
        check_envelope(whole)

        forward = await walk_after(list_page, order, 3)
        assert [p.ids for p in forward] == [expected[0:3], expected[3:6], expected[6:7]], order
        assert [p.has_more for p in forward] == [True, True, False], order
        for page in forward:
            check_envelope(page)

        # `before` walks back towards the start; each page is still in `order` and
        # has_more says whether more objects lie further back.
        backward = await walk_before(list_page, order, 3, expected[-1])
        assert [p.ids for p in backward] == [expected[3:6], expected[0:3]], order
        assert [p.has_more for p in backward] == [True, False], order
        for page in backward:
            check_envelope(page)

        # Both cursors: the objects strictly between them.
        between = await list_page(100, order, expected[1], expected[5])
        assert between.ids == expected[2:5], order
        assert not between.has_more
        # A short page between them still says more lie ahead before the `before` bound.
        short = await list_page(2, order, expected[1], expected[5])
        assert short.ids == expected[2:4], order
        assert short.has_more

        # The last object has nothing after it; the first nothing before it.
        tail = await list_page(3, order, expected[-1], "")
        assert tail == PageView([], "", "", False), order
        head = await list_page(3, order, "", expected[0])
        assert head == PageView([], "", "", False), order
