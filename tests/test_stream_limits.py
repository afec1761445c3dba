"""Upload streams and connections are bounded: a cap on open uploads per tenant and in all, an
idle timeout, and a keepalive policy the Python client keeps to."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio
from quiver.client._settings import KEEPALIVE_TIME_MS, channel_options
from quiver.server.config import Settings
from quiver.v1 import files_pb2, files_pb2_grpc

from tests.conftest import Running, Tenant
from tests.rpc_helpers import (
    PacedUpload,
    UploadCall,
    error_reason,
    list_file_ids,
    tmp_files,
    upload,
    wait_for,
)


def stalled_upload(tenant: Tenant, name: str) -> tuple[PacedUpload, UploadCall]:
    """An upload that sends its first message and then nothing."""
    paced = PacedUpload()
    paced.send(files_pb2.UploadFileRequest(filename=name, data=b"first piece"))
    return paced, tenant.files.UploadFile(paced.messages(), metadata=tenant.metadata)


async def ending(call: UploadCall, within: float = 20.0) -> aio.AioRpcError | None:
    """How the call ends: its error, or None for OK."""
    try:
        await asyncio.wait_for(call, within)
    except aio.AioRpcError as exc:
        return exc
    return None


def failed(err: aio.AioRpcError | None) -> aio.AioRpcError:
    assert err is not None, "the call succeeded"
    return err


async def outcome(call: UploadCall, within: float = 20.0) -> grpc.StatusCode:
    err = await ending(call, within)
    return grpc.StatusCode.OK if err is None else err.code()


@pytest.mark.parametrize("overrides", [{"max_uploads_per_tenant": 8, "max_uploads": 10}])
async def test_stalled_uploads_past_the_caps_are_refused(running: Running) -> None:
    a, b = running.alice, running.bob
    data_dir = running.server.settings.data_dir
    held = [stalled_upload(a, f"stall{i}.txt") for i in range(40)]
    endings = [asyncio.ensure_future(ending(c)) for _, c in held]
    # 32 of Alice's 40 end at once, RESOURCE_EXHAUSTED naming the flag; 8 hold a temp file.
    await wait_for(lambda: sum(e.done() for e in endings) == 32, within=20)
    await wait_for(lambda: len(tmp_files(data_dir)) == 8, within=10)
    for done in [e for e in endings if e.done()]:
        err = failed(done.result())
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-uploads-per-tenant" in (err.details() or "")
        assert error_reason(err) == "TENANT_UPLOADS_EXHAUSTED"
    # Bob is not refused, and his other RPCs answer.
    file = await upload(b, "bob.txt", b"hello from bob")
    assert await list_file_ids(b) == [file.id]
    # Two more of Bob's stalled uploads reach the global cap of 10; the third is refused.
    bobs = [stalled_upload(b, f"b{i}.txt") for i in range(3)]
    await wait_for(lambda: len(tmp_files(data_dir)) == 10, within=10)
    err = failed(await ending(bobs[2][1]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-uploads)" in (err.details() or "") and error_reason(err) == "UPLOADS_EXHAUSTED"
    # Finishing the held uploads frees their slots: each completes, and a new one works.
    still = [(p, e) for (p, _), e in zip(held, endings, strict=True) if not e.done()]
    for paced in [p for p, _ in still] + [p for p, _ in bobs[:2]]:
        paced.close()
    results = [await e for _, e in still] + [await ending(c) for _, c in bobs[:2]]
    assert results == [None] * 10
    assert running.server.core.uploads.open == 0
    await upload(a, "after.txt", b"room again")
    assert tmp_files(data_dir) == []


@pytest.mark.parametrize("overrides", [{"upload_idle_timeout": 1.0}])
async def test_an_idle_upload_is_cut_and_its_temp_file_removed(running: Running) -> None:
    a = running.alice
    data_dir = running.server.settings.data_dir
    _paced, call = stalled_upload(a, "idle.txt")
    await wait_for(lambda: len(tmp_files(data_dir)) == 1, within=10)
    err = failed(await ending(call))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--upload-idle-timeout" in (err.details() or "")
    assert error_reason(err) == "UPLOAD_IDLE"
    assert tmp_files(data_dir) == []
    assert running.server.core.uploads.open == 0
    # A stream that never sends its first message is cut too.
    silent = PacedUpload()
    call = a.files.UploadFile(silent.messages(), metadata=a.metadata)
    assert await outcome(call) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert running.server.core.uploads.open == 0
    # An upload that keeps sending, slower than the timeout in all, is not cut.
    steady = PacedUpload()
    steady.send(files_pb2.UploadFileRequest(filename="steady.txt", data=b"a"))
    call = a.files.UploadFile(steady.messages(), metadata=a.metadata)
    for _ in range(4):
        await asyncio.sleep(0.4)
        steady.send(files_pb2.UploadFileRequest(data=b"b"))
    steady.close()
    assert (await call).file.bytes == 5


async def test_an_upload_without_a_key_ends_before_its_stream_is_read(running: Running) -> None:
    stub = files_pb2_grpc.FileServiceStub(running.channel)
    paced = PacedUpload()
    paced.send(files_pb2.UploadFileRequest(filename="nokey.txt", data=b"x"))
    call = stub.UploadFile(paced.messages())  # never closed: the server must not wait for it
    assert await outcome(call, within=10) == grpc.StatusCode.UNAUTHENTICATED
    assert tmp_files(running.server.settings.data_dir) == []
    assert running.server.core.uploads.open == 0


# -- keepalive ----------------------------------------------------------------------------

SCALE = 30
"""Real intervals divided by this: the client's 30 s pings become 1 s, the server's limit
0.5 s, so eight seconds here are four minutes of a real quiet upload."""


@pytest.mark.parametrize("overrides", [{"min_ping_interval": Settings().min_ping_interval / SCALE}])
async def test_a_long_quiet_call_with_client_pings_is_not_cut(running: Running) -> None:
    assert 2 * Settings().min_ping_interval <= KEEPALIVE_TIME_MS / 1000
    options = channel_options(keepalive_time_ms=KEEPALIVE_TIME_MS // SCALE)
    async with aio.insecure_channel(running.target, options=options) as channel:
        stub = files_pb2_grpc.FileServiceStub(channel)
        paced = PacedUpload()
        paced.send(files_pb2.UploadFileRequest(filename="slow.txt", data=b"start "))
        call = stub.UploadFile(paced.messages(), metadata=running.alice.metadata)
        await asyncio.sleep(8.0)  # eight client pings, no data either way
        paced.send(files_pb2.UploadFileRequest(data=b"end"))
        paced.close()
        reply = await call
        assert reply.file.bytes == len(b"start end")
