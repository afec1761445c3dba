"""`quiver keys list` / `quiver keys revoke`, and a running server that re-reads its keys file
when it changes or on SIGHUP."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio
from quiver.server.app import QuiverServer
from quiver.server.auth.keys import fingerprint, hash_key, list_keys, revoke_keys
from quiver.server.config import Settings
from quiver.v1 import vector_stores_pb2, vector_stores_pb2_grpc

from tests.test_e2e_grpcurl import (
    clean_env,
    grpcurl,
    kill_quietly,
    start_serve,
    terminate,
    wait_serving,
)


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quiver.server.cli", "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )


def add(keys_file: Path, tenant: str) -> str:
    done = keys_cli("add", tenant, "--file", str(keys_file))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_list_and_revoke_from_the_command_line(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    acme1, acme2, other = add(keys_file, "acme"), add(keys_file, "acme"), add(keys_file, "other")
    listed = keys_cli("list", "--file", str(keys_file))
    assert listed.returncode == 0, listed.stderr
    prints = {k: fingerprint(hash_key(k)) for k in (acme1, acme2, other)}
    assert listed.stdout.splitlines() == [
        f"acme\t{prints[acme1]}",
        f"acme\t{prints[acme2]}",
        f"other\t{prints[other]}",
    ]
    assert acme1 not in listed.stdout  # only hashes are stored

    done = keys_cli("revoke", prints[acme2], "--file", str(keys_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"revoked acme\t{prints[acme2]}"
    assert [e.digest for e in list_keys(keys_file)] == [hash_key(acme1), hash_key(other)]
    assert keys_file.read_text().startswith("# Quiver API keys")  # comments kept

    done = keys_cli("revoke", other, "--file", str(keys_file))  # by the key itself
    assert done.returncode == 0, done.stderr
    done = keys_cli("revoke", "--tenant", "acme", "--file", str(keys_file))
    assert done.returncode == 0, done.stderr
    assert list_keys(keys_file) == []

    for bad, message in [
        (["zz"], "8…64 hex digits"),
        (["0123456789ab"], "no key of that key"),
        (["--tenant", "nobody"], "no key of tenant 'nobody'"),
        ([], "name one key"),
    ]:
        done = keys_cli("revoke", *bad, "--file", str(keys_file))
        assert done.returncode == 2 and message in done.stderr, (bad, done.stderr)
    assert keys_cli("list", "--file", str(tmp_path / "absent")).returncode == 2


async def create_store(channel: aio.Channel, key: str) -> grpc.StatusCode:
    stub = vector_stores_pb2_grpc.VectorStoreServiceStub(channel)
    try:
        await stub.CreateVectorStore(
            vector_stores_pb2.CreateVectorStoreRequest(name="k"),
            metadata=(("authorization", f"Bearer {key}"),),
        )
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def eventually(channel: aio.Channel, key: str, code: grpc.StatusCode) -> None:
    deadline = time.monotonic() + 5
    while (got := await create_store(channel, key)) != code:
        assert time.monotonic() < deadline, f"still {got}, expected {code}"
        await asyncio.sleep(0.05)


async def test_a_changed_keys_file_is_read_again(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    first = add(keys_file, "acme")
    server = QuiverServer(
        Settings(
            http_listen="127.0.0.1:0",
            listen="127.0.0.1:0",
            data_dir=tmp_path / "data",
            api_keys_file=keys_file,
            reload_interval=0.05,
        )
    )
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        assert await create_store(channel, first) == grpc.StatusCode.OK
        second = add(keys_file, "acme")
        await eventually(channel, second, grpc.StatusCode.OK)
        revoke_keys(keys_file, key_or_fingerprint=first)
        await eventually(channel, first, grpc.StatusCode.UNAUTHENTICATED)

        # A malformed file keeps the keys in force; an empty one never opens the server.
        keys_file.write_text(keys_file.read_text() + "garbage line\n")
        await asyncio.sleep(0.3)
        assert await create_store(channel, second) == grpc.StatusCode.OK
        keys_file.write_text("")
        await eventually(channel, second, grpc.StatusCode.UNAUTHENTICATED)
        assert await create_store(channel, "") == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)


@pytest.mark.e2e
def test_sighup_reloads_the_keys_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    key = add(keys_file, "acme")
    served = start_serve(
        tmp_path / "data",
        tmp_path / "serve.log",
        "--api-keys-file",
        str(keys_file),
        "--reload-interval",
        "0",  # only SIGHUP
    )
    try:
        wait_serving(served, timeout=60)
        method = "quiver.v1.VectorStoreService/CreateVectorStore"
        ok = grpcurl(served.address, method, flags=["-d", "{}"], key=key)
        assert ok.returncode == 0, ok.stderr
        revoke_keys(keys_file, tenant="acme")
        time.sleep(0.2)
        still = grpcurl(served.address, method, flags=["-d", "{}"], key=key)
        assert still.returncode == 0, still.stderr  # no SIGHUP yet, no polling
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            done = grpcurl(served.address, method, flags=["-d", "{}"], key=key)
            if "Unauthenticated" in done.stderr:
                break
            assert time.monotonic() < deadline, done.stdout + done.stderr
            time.sleep(0.1)
        assert any(
            json.loads(line).get("msg") == "API keys reloaded"
            for line in served.logs().splitlines()
            if line.startswith("{")
        )
        assert terminate(served) == 0
    finally:
        kill_quietly(served)
