"""FileService against a real server: upload, download, limits, deletion, listing."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc import aio
from quiver.server.config import Settings
from quiver.v1 import files_pb2

from tests.support.inproc import Running, Tenant
from tests.support.rpc_helpers import (
    ListPage,
    PageView,
    blob_files,
    check_cursor_pagination,
    check_envelope,
    download,
    error_info,
    error_reason,
    field_violations,
    iter_async,
    list_file_ids,
    sha256_hex,
    start_paced_upload,
    tmp_files,
    upload,
    violated_fields,
    wait_for,
)

MiB = 1024 * 1024
LIMIT = 6 * MiB


@pytest.fixture
def settings(settings: Settings) -> Iterator[Settings]:
    """A small upload limit, still above the 5 MB round trip."""
    yield replace(settings, max_file_bytes=LIMIT)


def data_dir(running: Running) -> Path:
    return running.server.settings.data_dir


async def assert_nothing_stored(running: Running, tenant: Tenant) -> None:
    assert await list_file_ids(tenant) == []
    assert blob_files(data_dir(running)) == []
    assert tmp_files(data_dir(running)) == []


# -- upload and download -------------------------------------------------------------------


async def test_multi_megabyte_round_trip(running: Running) -> None:
    a = running.alice
    data = os.urandom(5 * MiB + 123)  # not a multiple of the piece size
    before = int(time.time())
    file = await upload(a, "big.bin", data, piece=64 * 1024)
    after = int(time.time())

    assert file.id.startswith("file-") and len(file.id) == len("file-") + 24
    assert file.object == "file"
    assert file.bytes == len(data)
    assert file.sha256 == sha256_hex(data)
    assert file.filename == "big.bin"
    assert file.purpose == "assistants"  # the default when empty
    assert before <= file.created_at <= after

    got = await a.files.GetFile(files_pb2.GetFileRequest(file_id=file.id), metadata=a.metadata)
    assert got.file == file

    meta, content, pieces = await download(a, file.id)
    assert meta == file
    assert len(content) == len(data)
    assert content == data
    assert sha256_hex(content) == file.sha256
    assert max(pieces) <= 64 * 1024
    assert len(pieces) >= len(data) // (64 * 1024)
    assert blob_files(data_dir(running)) == [file.sha256]
    assert tmp_files(data_dir(running)) == []


async def test_data_in_the_first_message_and_odd_pieces(running: Running) -> None:
    a = running.alice
    data = os.urandom(100_000)
    file = await upload(a, "odd.bin", data, piece=7_777, data_in_first=True, purpose="user_data")
    assert (file.bytes, file.sha256, file.purpose) == (len(data), sha256_hex(data), "user_data")
    _, content, _ = await download(a, file.id)
    assert content == data


async def test_single_message_upload(running: Running) -> None:
    a = running.alice

    async def one() -> AsyncIterator[files_pb2.UploadFileRequest]:
        yield files_pb2.UploadFileRequest(filename="one.txt", purpose="batch", data=b"hello")

    reply = await a.files.UploadFile(one(), metadata=a.metadata)
    assert (reply.file.bytes, reply.file.purpose) == (5, "batch")
    _, content, _ = await download(a, reply.file.id)
    assert content == b"hello"


async def test_empty_file_is_stored(running: Running) -> None:
    a = running.alice
    file = await upload(a, "empty.txt", b"")
    assert (file.bytes, file.sha256) == (0, sha256_hex(b""))
    meta, content, pieces = await download(a, file.id)
    assert (meta, content, pieces) == (file, b"", [])


async def test_correct_sha256_is_accepted(running: Running) -> None:
    a = running.alice
    data = os.urandom(300_000)
    file = await upload(a, "checked.bin", data, sha256=sha256_hex(data))
    assert file.sha256 == sha256_hex(data)
    upper = await upload(a, "upper.bin", data, sha256=sha256_hex(data).upper())
    assert upper.sha256 == sha256_hex(data)  # always reported in lower case


async def test_sha256_mismatch_stores_nothing(running: Running) -> None:
    a = running.alice
    data = os.urandom(200_000)
    with pytest.raises(aio.AioRpcError) as err:
        await upload(a, "bad.bin", data, sha256=sha256_hex(data + b"x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["sha256"]
    assert sha256_hex(data) in field_violations(err.value)[0][1]
    assert error_reason(err.value) == "CHECKSUM_MISMATCH"
    await assert_nothing_stored(running, a)


async def test_malformed_sha256(running: Running) -> None:
    a = running.alice
    with pytest.raises(aio.AioRpcError) as err:
        await upload(a, "x.bin", b"abc", sha256="xyz")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["sha256"]
    await assert_nothing_stored(running, a)


async def test_upload_exactly_at_the_limit(running: Running) -> None:
    a = running.alice
    data = os.urandom(LIMIT)
    file = await upload(a, "limit.bin", data, piece=1 * MiB)
    assert file.bytes == LIMIT


async def test_upload_past_the_limit_stores_nothing(running: Running) -> None:
    a = running.alice
    with pytest.raises(aio.AioRpcError) as err:
        await upload(a, "huge.bin", os.urandom(LIMIT + 1), piece=1 * MiB)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(LIMIT) in (err.value.details() or "")
    assert error_reason(err.value) == "FILE_TOO_LARGE"
    await assert_nothing_stored(running, a)


async def test_empty_stream(running: Running) -> None:
    a = running.alice

    async def nothing() -> AsyncIterator[files_pb2.UploadFileRequest]:
        return
        yield  # pragma: no cover - makes this an async generator

    with pytest.raises(aio.AioRpcError) as err:
        await a.files.UploadFile(nothing(), metadata=a.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["filename"]
    await assert_nothing_stored(running, a)


BAD_HEADERS = [
    ("", "", "filename"),
    ("dir/name.txt", "", "filename"),
    ("/", "", "filename"),
    ("nul\x00.txt", "", "filename"),
    ("..", "", "filename"),
    ("x" * 256, "", "filename"),
    ("ok.txt", "nope", "purpose"),
    ("ok.txt", "Assistants", "purpose"),
]


async def test_bad_filename_or_purpose(running: Running) -> None:
    a = running.alice
    for filename, purpose, field in BAD_HEADERS:
        case = (filename[:20], purpose)
        with pytest.raises(aio.AioRpcError) as err:
            await upload(a, filename, b"data", purpose=purpose)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert violated_fields(err.value) == [field], case
    await assert_nothing_stored(running, a)


async def test_filename_boundaries_and_all_purposes(running: Running) -> None:
    a = running.alice
    longest = await upload(a, "x" * 255, b"a")
    assert longest.filename == "x" * 255
    unicode = await upload(a, "résumé ✓.txt", b"b")
    assert unicode.filename == "résumé ✓.txt"
    for purpose in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
        assert (await upload(a, "p.txt", b"c", purpose=purpose)).purpose == purpose


async def test_header_fields_in_a_later_message(running: Running) -> None:
    a = running.alice
    for later, field in [
        (files_pb2.UploadFileRequest(filename="again.txt", data=b"x"), "filename"),
        (files_pb2.UploadFileRequest(purpose="batch"), "purpose"),
        (files_pb2.UploadFileRequest(sha256="0" * 64), "sha256"),
    ]:
        messages = [files_pb2.UploadFileRequest(filename="first.txt", data=b"abc"), later]
        with pytest.raises(aio.AioRpcError) as err:
            await a.files.UploadFile(iter_async(messages), metadata=a.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert violated_fields(err.value) == [field]
    await assert_nothing_stored(running, a)


REJECTIONS = 200
"""Early rejections sent in a row by test_an_early_rejection_reaches_a_client_still_sending."""


async def test_an_early_rejection_reaches_a_client_still_sending(running: Running) -> None:
    """The server rejects the second message while the client still has pieces to send.
    grpc.aio's client reports such a call as INTERNAL "Internal error from Core" whenever one
    of its writes fails after the server's status arrived (grpc/grpc#36066), so the server
    reads the rest of the stream, up to a bound, before it answers: the client sees the
    server's INVALID_ARGUMENT every time. (Answering at once, 3 to 8 of these 200 came back
    INTERNAL in each of two runs.)"""
    a = running.alice
    codes: list[grpc.StatusCode] = []
    for _ in range(REJECTIONS):
        messages = [
            files_pb2.UploadFileRequest(filename="first.txt", data=b"abc"),
            files_pb2.UploadFileRequest(filename="again.txt"),
            *[files_pb2.UploadFileRequest(data=b"x" * 10) for _ in range(50)],
        ]
        with pytest.raises(aio.AioRpcError) as err:
            await a.files.UploadFile(iter_async(messages), metadata=a.metadata)
        codes.append(err.value.code())
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * REJECTIONS, Counter(codes)
    await assert_nothing_stored(running, a)


@pytest.mark.parametrize("how", ["cancel", "deadline"])
async def test_interrupted_upload_stores_nothing(running: Running, how: str) -> None:
    """A stream that ends because the call died is not a finished upload.

    (grpc.aio ends the request iterator of a cancelled call just like a half-closed one.)
    """
    a = running.alice
    deadline = 0.5 if how == "deadline" else None
    paced, call = await start_paced_upload(
        a, data_dir(running), os.urandom(100_000), deadline=deadline
    )
    if how == "cancel":
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    else:
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    paced.close()
    # Whether committed or aborted, the server's temp file goes: then it has decided.
    await wait_for(lambda: tmp_files(data_dir(running)) == [])
    await assert_nothing_stored(running, a)


# -- missing files and deletion ------------------------------------------------------------


async def test_unknown_file_id_is_not_found(running: Running) -> None:
    a = running.alice
    unknown = "file-" + "x" * 24
    with pytest.raises(aio.AioRpcError) as err:
        await a.files.GetFile(files_pb2.GetFileRequest(file_id=unknown), metadata=a.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(err.value) == "FILE_NOT_FOUND"
    with pytest.raises(aio.AioRpcError) as err:
        await a.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=unknown), metadata=a.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as err:
        await download(a, unknown)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(err.value) == "FILE_NOT_FOUND"


async def test_missing_file_id_is_invalid(running: Running) -> None:
    a = running.alice
    with pytest.raises(aio.AioRpcError) as err:
        await a.files.GetFile(files_pb2.GetFileRequest(), metadata=a.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["file_id"]


async def test_delete_then_get(running: Running) -> None:
    a = running.alice
    file = await upload(a, "gone.txt", b"soon gone")
    reply = await a.files.DeleteFile(
        files_pb2.DeleteFileRequest(file_id=file.id), metadata=a.metadata
    )
    assert (reply.id, reply.object, reply.deleted) == (file.id, "file", True)
    for call in (
        a.files.GetFile(files_pb2.GetFileRequest(file_id=file.id), metadata=a.metadata),
        a.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=file.id), metadata=a.metadata),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as err:
        await download(a, file.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await list_file_ids(a) == []
    assert blob_files(data_dir(running)) == []


async def test_shared_blob_is_removed_with_its_last_file(running: Running) -> None:
    a, b = running.alice, running.bob
    data = os.urandom(150_000)
    first = await upload(a, "one.bin", data)
    second = await upload(a, "two.bin", data)
    other_tenant = await upload(b, "three.bin", data)
    assert first.id != second.id
    assert first.sha256 == second.sha256 == other_tenant.sha256
    assert blob_files(data_dir(running)) == [first.sha256]

    await a.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=first.id), metadata=a.metadata)
    assert blob_files(data_dir(running)) == [first.sha256]
    _, content, _ = await download(a, second.id)
    assert content == data

    await a.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=second.id), metadata=a.metadata)
    assert blob_files(data_dir(running)) == [first.sha256]  # bob's file still uses it
    _, content, _ = await download(b, other_tenant.id)
    assert content == data

    await b.files.DeleteFile(
        files_pb2.DeleteFileRequest(file_id=other_tenant.id), metadata=b.metadata
    )
    assert blob_files(data_dir(running)) == []


async def test_reupload_after_delete(running: Running) -> None:
    a = running.alice
    data = b"same bytes, second life"
    first = await upload(a, "a.txt", data)
    await a.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=first.id), metadata=a.metadata)
    again = await upload(a, "a.txt", data)
    _, content, _ = await download(a, again.id)
    assert content == data


# -- listing -------------------------------------------------------------------------------


def files_page_lister(tenant: Tenant, purpose: str = "") -> ListPage:
    async def list_page(limit: int, order: str, after: str, before: str) -> PageView:
        reply = await tenant.files.ListFiles(
            files_pb2.ListFilesRequest(
                limit=limit, order=order, after=after, before=before, purpose=purpose
            ),
            metadata=tenant.metadata,
        )
        assert reply.object == "list"
        return PageView([f.id for f in reply.data], reply.first_id, reply.last_id, reply.has_more)

    return list_page


async def test_list_pagination(running: Running) -> None:
    a = running.alice
    ids = [(await upload(a, f"f{i}.txt", f"content {i}".encode())).id for i in range(7)]
    await check_cursor_pagination(files_page_lister(a), ids)


async def test_list_default_order_is_newest_first(running: Running) -> None:
    a = running.alice
    ids = [(await upload(a, f"f{i}.txt", b"x")).id for i in range(3)]
    reply = await a.files.ListFiles(files_pb2.ListFilesRequest(), metadata=a.metadata)
    assert [f.id for f in reply.data] == ids[::-1]
    assert [f.filename for f in reply.data] == ["f2.txt", "f1.txt", "f0.txt"]


async def test_list_default_limit_is_20(running: Running) -> None:
    a = running.alice
    for i in range(21):
        await upload(a, f"f{i}.txt", b"x")
    page = await files_page_lister(a)(0, "", "", "")
    assert len(page.ids) == 20
    assert page.has_more
    check_envelope(page)
    full = await files_page_lister(a)(100, "", "", "")
    assert len(full.ids) == 21 and not full.has_more
    one = await files_page_lister(a)(1, "", "", "")
    assert one.ids == full.ids[:1] and one.has_more


async def test_empty_list(running: Running) -> None:
    page = await files_page_lister(running.alice)(0, "", "", "")
    assert page == PageView([], "", "", False)


async def test_bad_list_requests(running: Running) -> None:
    a = running.alice
    await upload(a, "present.txt", b"x")
    for request, field in [
        (files_pb2.ListFilesRequest(limit=101), "limit"),
        (files_pb2.ListFilesRequest(limit=-1), "limit"),
        (files_pb2.ListFilesRequest(order="up"), "order"),
        (files_pb2.ListFilesRequest(order="ASC"), "order"),
        (files_pb2.ListFilesRequest(after="file-" + "n" * 24), "after"),
        (files_pb2.ListFilesRequest(before="file-" + "n" * 24), "before"),
    ]:
        with pytest.raises(aio.AioRpcError) as err:
            await a.files.ListFiles(request, metadata=a.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert violated_fields(err.value) == [field], request
    page = await files_page_lister(a)(100, "asc", "", "")
    assert len(page.ids) == 1  # limit 100 is fine


async def test_purpose_filter(running: Running) -> None:
    a = running.alice
    made = {
        name: (await upload(a, f"{name}.txt", b"x", purpose=purpose)).id
        for name, purpose in [
            ("a1", "assistants"),
            ("b1", "batch"),
            ("u1", "user_data"),
            ("b2", "batch"),
            ("a2", ""),  # the default, assistants
        ]
    }
    assert await list_file_ids(a, "batch") == [made["b1"], made["b2"]]
    assert await list_file_ids(a, "assistants") == [made["a1"], made["a2"]]
    assert await list_file_ids(a, "user_data") == [made["u1"]]
    assert await list_file_ids(a, "evals") == []
    assert await list_file_ids(a) == list(made.values())
    # Cursors work inside a filtered list.
    page = await files_page_lister(a, "batch")(1, "asc", "", "")
    assert (page.ids, page.has_more) == ([made["b1"]], True)
    page = await files_page_lister(a, "batch")(1, "asc", made["b1"], "")
    assert (page.ids, page.has_more) == ([made["b2"]], False)


# -- damaged or missing content ------------------------------------------------------------


def _blob_path(running: Running, sha256: str) -> Path:
    return running.server.settings.data_dir / "blobs" / sha256[:2] / sha256


async def test_download_checks_the_stored_bytes(running: Running) -> None:
    """A blob changed on disk (one flipped bit, cut short, grown) or gone: DownloadFile ends
    with DATA_LOSS naming the file, never INTERNAL and never a clean end over bad bytes."""
    a = running.alice
    data = os.urandom(300_000)  # several download pieces
    damages: dict[str, Callable[[bytes], bytes]] = {
        "bit-flip": lambda b: b[:200_000] + bytes([b[200_000] ^ 0x01]) + b[200_001:],
        "first-byte": lambda b: bytes([b[0] ^ 0x80]) + b[1:],
        "truncated": lambda b: b[:100_000],
        "grown": lambda b: b + b"x",
        "empty": lambda b: b"",
    }
    for name, damage in damages.items():
        file = await upload(a, f"{name}.bin", data + name.encode())
        path = _blob_path(running, file.sha256)
        path.write_bytes(damage(path.read_bytes()))
        with pytest.raises(aio.AioRpcError) as err:
            await download(a, file.id)
        assert err.value.code() == grpc.StatusCode.DATA_LOSS, name
        assert file.id in (err.value.details() or ""), name
        assert error_info(err.value).reason == "CONTENT_DAMAGED", name

    file = await upload(a, "gone.bin", data)
    _blob_path(running, file.sha256).unlink()
    with pytest.raises(aio.AioRpcError) as err:
        await download(a, file.id)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert error_info(err.value).reason == "CONTENT_MISSING"
    assert "missing" in (err.value.details() or "")

    good = await upload(a, "good.bin", data + b"good")
    assert (await download(a, good.id))[1] == data + b"good"
