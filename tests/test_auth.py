"""Authentication, tenancy, on-behalf-of narrowing, health, open mode and the keys file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quiver.server.app import ConfigError, QuiverServer
from quiver.server.auth.keys import KeyConfigError, KeyRing, hash_key
from quiver.server.config import Settings
from quiver.v1 import files_pb2
from quiver.v1 import vector_stores_pb2 as pb

from tests.conftest import Running, Tenant, _tenant
from tests.rpc_helpers import download, error_info, list_file_ids, upload

SERVICES = ("quiver.v1.FileService", "quiver.v1.VectorStoreService", "quiver.v1.FileBatchService")


def caller(running: Running, metadata: tuple[tuple[str, str], ...]) -> Tenant:
    """A caller on the shared channel sending exactly ``metadata``."""
    t = _tenant("anyone", "", running.channel)
    t.metadata = metadata
    return t


async def list_store_ids(tenant: Tenant) -> list[str]:
    reply = await tenant.stores.ListVectorStores(
        pb.ListVectorStoresRequest(limit=100, order="asc"), metadata=tenant.metadata
    )
    return [s.id for s in reply.data]


# -- authentication ------------------------------------------------------------------------

BAD_CREDENTIALS = [
    ((), "MISSING_API_KEY"),
    ((("authorization", "Bearer qv_not-a-real-key"),), "INVALID_API_KEY"),
    ((("authorization", "Basic xyz"),), "BAD_AUTHORIZATION"),
    ((("authorization", "Bearer "),), "BAD_AUTHORIZATION"),
    ((("authorization", "qv_bare-key-without-scheme"),), "BAD_AUTHORIZATION"),
]


async def test_unauthenticated(running: Running) -> None:
    """Every RPC shape (unary, client stream, server stream) checks the key."""
    a = running.alice
    file = await upload(a, "secret.txt", b"secret")
    for metadata, reason in BAD_CREDENTIALS:
        who = caller(running, metadata)
        with pytest.raises(aio.AioRpcError) as err:
            await who.files.ListFiles(files_pb2.ListFilesRequest(), metadata=who.metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        info = error_info(err.value)
        assert (info.reason, info.domain) == (reason, "quiver"), metadata
        assert err.value.details()  # a message a person can act on

        with pytest.raises(aio.AioRpcError) as err:
            await upload(who, "sneaky.txt", b"nope")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert error_info(err.value).reason == reason

        with pytest.raises(aio.AioRpcError) as err:
            await download(who, file.id)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert error_info(err.value).reason == reason
    assert await list_file_ids(a) == [file.id]


async def test_scheme_is_case_insensitive(running: Running) -> None:
    who = caller(running, (("authorization", f"bearer {running.alice.key}"),))
    file = await upload(who, "lower.txt", b"x")
    assert await list_file_ids(running.alice) == [file.id]


async def test_bad_on_behalf_of(running: Running) -> None:
    who = running.tenant("alice", on_behalf_of="u" * 257)
    with pytest.raises(aio.AioRpcError) as err:
        await who.files.ListFiles(files_pb2.ListFilesRequest(), metadata=who.metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(err.value).reason == "BAD_ON_BEHALF_OF"
    ok = running.tenant("alice", on_behalf_of="u" * 256)
    await ok.files.ListFiles(files_pb2.ListFilesRequest(), metadata=ok.metadata)


async def test_duplicate_identity_headers_are_refused(running: Running) -> None:
    """Two authorization or x-on-behalf-of headers: refused, whichever order and even when
    both copies are valid (before, the last one won: a proxy adding its own header could be
    overridden by the caller's)."""
    alice, bob = running.alice.key, running.bob.key
    cases = [
        (("authorization", f"Bearer {alice}"), ("authorization", f"Bearer {bob}")),
        (("authorization", f"Bearer {bob}"), ("authorization", f"Bearer {alice}")),
        (("authorization", f"Bearer {alice}"), ("authorization", f"Bearer {alice}")),
        (("authorization", f"Bearer {alice}"), ("authorization", "Bearer qv_nope")),
        (
            ("authorization", f"Bearer {alice}"),
            ("x-on-behalf-of", "user-1"),
            ("x-on-behalf-of", "user-2"),
        ),
    ]
    for metadata in cases:
        who = caller(running, metadata)
        with pytest.raises(aio.AioRpcError) as err:
            await who.files.ListFiles(files_pb2.ListFilesRequest(), metadata=who.metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert error_info(err.value).reason == "DUPLICATE_METADATA"
        assert "sent more than once" in (err.value.details() or "")
        with pytest.raises(aio.AioRpcError) as err:
            await upload(who, "twice.txt", b"x")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await list_file_ids(running.alice) == []
    assert await list_file_ids(running.bob) == []


# -- tenancy -------------------------------------------------------------------------------


async def test_other_tenant_sees_nothing(running: Running) -> None:
    a, b = running.alice, running.bob
    file = await upload(a, "alice.txt", b"alice's bytes")
    store = await a.stores.CreateVectorStore(
        pb.CreateVectorStoreRequest(name="alice's", metadata={"owner": "alice"}),
        metadata=a.metadata,
    )
    vs = store.vector_store

    async def not_found(call: Awaitable[object]) -> str:
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value
        return str(error_info(err.value).reason)

    # Exactly what bob would get for an id that does not exist.
    unknown_file = "file-" + "u" * 24
    unknown_vs = "vs_" + "u" * 24
    for file_id in (file.id, unknown_file):
        assert (
            await not_found(
                b.files.GetFile(files_pb2.GetFileRequest(file_id=file_id), metadata=b.metadata)
            )
            == "FILE_NOT_FOUND"
        )
        assert await not_found(download(b, file_id)) == "FILE_NOT_FOUND"
        assert (
            await not_found(
                b.files.DeleteFile(
                    files_pb2.DeleteFileRequest(file_id=file_id), metadata=b.metadata
                )
            )
            == "FILE_NOT_FOUND"
        )
    for store_id in (vs.id, unknown_vs):
        for call in (
            b.stores.GetVectorStore(
                pb.GetVectorStoreRequest(vector_store_id=store_id), metadata=b.metadata
            ),
            b.stores.UpdateVectorStore(
                pb.UpdateVectorStoreRequest(vector_store_id=store_id, name="bob's now"),
                metadata=b.metadata,
            ),
            b.stores.DeleteVectorStore(
                pb.DeleteVectorStoreRequest(vector_store_id=store_id), metadata=b.metadata
            ),
        ):
            assert await not_found(call) == "VECTOR_STORE_NOT_FOUND"

    assert await list_file_ids(b) == []
    assert await list_store_ids(b) == []
    # Alice's ids are not even valid cursors in bob's lists.
    with pytest.raises(aio.AioRpcError) as err:
        await b.files.ListFiles(files_pb2.ListFilesRequest(after=file.id), metadata=b.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as err:
        await b.stores.ListVectorStores(
            pb.ListVectorStoresRequest(before=vs.id), metadata=b.metadata
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Alice's objects are intact.
    meta, content, _ = await download(a, file.id)
    assert (meta, content) == (file, b"alice's bytes")
    got = await a.stores.GetVectorStore(
        pb.GetVectorStoreRequest(vector_store_id=vs.id), metadata=a.metadata
    )
    assert got.vector_store == vs
    assert await list_file_ids(a) == [file.id]
    assert await list_store_ids(a) == [vs.id]


async def test_on_behalf_of_narrows(running: Running) -> None:
    callers = {
        "alice": running.alice,
        "u1": running.tenant("alice", on_behalf_of="u1"),
        "u2": running.tenant("alice", on_behalf_of="u2"),
        "bob-u1": running.tenant("bob", on_behalf_of="u1"),
    }
    files: dict[str, str] = {}
    stores: dict[str, str] = {}
    for name, who in callers.items():
        files[name] = (await upload(who, f"{name}.txt", name.encode())).id
        reply = await who.stores.CreateVectorStore(
            pb.CreateVectorStoreRequest(name=name), metadata=who.metadata
        )
        stores[name] = reply.vector_store.id

    for name, who in callers.items():
        assert await list_file_ids(who) == [files[name]], name
        assert await list_store_ids(who) == [stores[name]], name
        _, content, _ = await download(who, files[name])
        assert content == name.encode()
        for other in callers:
            if other == name:
                continue
            with pytest.raises(aio.AioRpcError) as err:
                await who.files.GetFile(
                    files_pb2.GetFileRequest(file_id=files[other]), metadata=who.metadata
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, (name, other)
            with pytest.raises(aio.AioRpcError) as err:
                await who.stores.GetVectorStore(
                    pb.GetVectorStoreRequest(vector_store_id=stores[other]),
                    metadata=who.metadata,
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, (name, other)


# -- health --------------------------------------------------------------------------------


async def test_health_needs_no_key(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    for service in ("", *SERVICES):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(aio.AioRpcError) as err:
        await health.Check(health_pb2.HealthCheckRequest(service="quiver.v1.Nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def close_unstarted(server: QuiverServer) -> None:
    """Closes what the constructor opened (stop() is for started servers)."""
    server.core.pool.close()
    server.core.db.close()


# -- open mode -----------------------------------------------------------------------------


async def test_open_mode_serves_without_a_key(tmp_path: Path) -> None:
    server = QuiverServer(
        Settings(http_listen="127.0.0.1:0", listen="127.0.0.1:0", data_dir=tmp_path / "open")
    )
    assert server.keys.open
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        anyone = _tenant("default", "", channel)
        anyone.metadata = ()
        file = await upload(anyone, "open.txt", b"no key needed")
        # Whatever authorization is sent, it is ignored: one tenant, "default".
        other = _tenant("default", "qv_whatever", channel)
        assert await list_file_ids(other) == [file.id]
        # x-on-behalf-of still narrows.
        narrowed = _tenant("default", "", channel, subject="u1")
        assert await list_file_ids(narrowed) == []
        row = server.core.db.execute("SELECT tenant, subject FROM files WHERE id = ?", (file.id,))
        assert tuple(row.fetchone()) == ("default", "")
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "192.0.2.1:0", "example.com:0"])
def test_open_mode_refuses_a_public_address(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        QuiverServer(Settings(http_listen="127.0.0.1:0", listen=listen, data_dir=tmp_path / "data"))
    assert not (tmp_path / "data").exists()  # refused before touching the disk


def test_keyed_server_may_listen_publicly_when_told_keys_may_travel_in_clear(
    tmp_path: Path,
) -> None:
    """Without TLS only with --insecure (tests/test_tls.py has the rest of that rule)."""
    settings = Settings(
        http_listen="127.0.0.1:0",
        listen="0.0.0.0:0",
        data_dir=tmp_path / "data",
        api_keys=f"acme sha256:{'0' * 64}",
        insecure=True,
    )
    server = QuiverServer(settings)  # constructed, never started
    close_unstarted(server)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:0", "[::1]:0", "127.5.6.7:0"])
def test_open_mode_accepts_loopback(tmp_path: Path, listen: str) -> None:
    server = QuiverServer(
        Settings(http_listen="127.0.0.1:0", listen=listen, data_dir=tmp_path / "data")
    )
    close_unstarted(server)


# -- the keys file -------------------------------------------------------------------------


def quiver_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quiver.server.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_keys_add_and_serve_with_the_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "conf" / "keys"
    first = quiver_cli("keys", "add", "acme", "--file", str(keys_file))
    assert first.returncode == 0, first.stderr
    key1 = first.stdout.strip()
    assert first.stdout == key1 + "\n"  # the key, once, and nothing else on stdout
    assert key1.startswith("qv_") and len(key1) > 40
    second = quiver_cli("keys", "add", "acme", "--file", str(keys_file))
    assert second.returncode == 0, second.stderr
    key2 = second.stdout.strip()
    assert key2 != key1

    text = keys_file.read_text()
    assert key1 not in text and key2 not in text
    entries = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert entries == [f"acme sha256:{hash_key(k).hex()}" for k in (key1, key2)]
    assert keys_file.stat().st_mode & 0o077 == 0  # not readable by others

    bad = quiver_cli("keys", "add", "no spaces allowed", "--file", str(keys_file))
    assert bad.returncode != 0
    assert keys_file.read_text() == text

    server = QuiverServer(
        Settings(
            http_listen="127.0.0.1:0",
            listen="127.0.0.1:0",
            data_dir=tmp_path / "data",
            api_keys_file=keys_file,
        )
    )
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        one = _tenant("acme", key1, channel)
        two = _tenant("acme", key2, channel)
        file = await upload(one, "acme.txt", b"acme data")
        # Both keys belong to tenant acme: they see the same files.
        assert await list_file_ids(two) == [file.id]
        row = server.core.db.execute("SELECT tenant FROM files WHERE id = ?", (file.id,)).fetchone()
        assert row["tenant"] == "acme"
        stranger = _tenant("acme", key1 + "x", channel)
        with pytest.raises(aio.AioRpcError) as err:
            await list_file_ids(stranger)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(err.value).reason == "INVALID_API_KEY"
    finally:
        await channel.close(None)
        await server.stop(grace=1.0)


@pytest.mark.parametrize(
    ("lines", "bad_line"),
    [
        (["acme sha256:" + "ab" * 32, "broken"], 2),
        (["# a comment", "", "acme sha256:abc"], 3),
        (["acme sha256:" + "AB" * 32], 1),
        (["acme md5:" + "ab" * 32], 1),
        (["ac/me sha256:" + "ab" * 32], 1),
        (["# keys, one per line", "acme sha256:" + "ab" * 32, "nope"], 3),
    ],
    ids=["no-hash", "short-hash", "upper-hex", "md5", "bad-tenant", "comma-in-comment"],
)
def test_malformed_keys_file(tmp_path: Path, lines: list[str], bad_line: int) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(KeyConfigError) as err:
        KeyRing.load(keys_file, None)
    assert f"{keys_file}:{bad_line}:" in str(err.value)


def test_keys_file_comments_and_blank_lines(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        "# Quiver keys, hashed\n\nacme sha256:" + "ab" * 32 + "  # ci, prod\n"
        "other sha256:" + "cd" * 32 + "\n"
    )
    ring = KeyRing.load(keys_file, None)
    assert len(ring) == 2
    assert not ring.open


def test_missing_keys_file(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="cannot read"):
        KeyRing.load(tmp_path / "absent", None)


def test_inline_keys_are_comma_separated() -> None:
    ring = KeyRing.load(None, f"a sha256:{'ab' * 32},b sha256:{'cd' * 32}")
    assert len(ring) == 2
    with pytest.raises(KeyConfigError, match="QUIVER_API_KEYS:2"):
        KeyRing.load(None, f"a sha256:{'ab' * 32},b sha256:nope")


def test_malformed_keys_file_stops_the_server(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("garbage\n")
    with pytest.raises(KeyConfigError, match=f"{keys_file}:1:"):
        QuiverServer(
            Settings(
                http_listen="127.0.0.1:0",
                listen="127.0.0.1:0",
                data_dir=tmp_path / "d",
                api_keys_file=keys_file,
            )
        )
    assert not (tmp_path / "d").exists()
