"""File bytes in S3-compatible object storage (``--blobs s3://bucket/prefix``), content-addressed
by sha256: object ``<prefix>/<sha256>``.

An upload's bytes are spooled to a local temp file while they are hashed (the key is their
sha256, known only at the end); ``commit`` then sends them: ``PutObject`` for a small file, a
multipart upload of ``PART_BYTES`` parts read one at a time from the spool for a big one
(memory stays one part, whatever the file's size). Both carry ``If-None-Match: *``: a
replica that stores content another already stored gets 412 and takes it as stored (the
bytes are the same by construction). Every method blocks (network): callers run them in a
thread, as they do for the local store's fsyncs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO

from quiver.server.storage.blob_location import BlobRef, S3Location, check_sha256
from quiver.server.storage.blob_spool import HashingSpool
from quiver.server.storage.s3_client import (
    BlobStoreError,
    client_for,
    describe,
    is_client_error,
    is_missing,
    is_precondition_failed,
)

log = logging.getLogger("quiver.server")

PART_BYTES = 16 * 1024 * 1024
"""Multipart part size (S3's minimum is 5 MiB; 16 MiB keeps a 512 MB file at 32 parts)."""
READ_PIECE = 1024 * 1024


class S3BlobWriter(HashingSpool):
    """Spools and hashes an upload's bytes; ``commit`` stores them under their sha256."""

    def __init__(self, store: S3BlobStore) -> None:
        super().__init__(store.spool_dir)
        self._store = store

    def commit(self) -> str:
        """Sends the spooled bytes unless that content is stored already; BlobStoreError if
        the object store cannot take them (the spool is removed either way)."""
        digest = self.sha256
        try:
            self._file.flush()
            self._store.put(digest, self._file, self.size)
        finally:
            self.abort()
        return digest


class S3Object:
    """A stored object read piece by piece; the GET is sent at the first ``read`` (so opening
    costs nothing on the event loop). A missing object raises FileNotFoundError there."""

    def __init__(self, store: S3BlobStore, sha256: str) -> None:
        self._store = store
        self._sha256 = sha256
        self._body: Any = None
        self._closed = False

    def read(self, size: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read from a closed blob")
        if self._body is None:
            self._body = self._store.get_body(self._sha256)
        try:
            piece: bytes = self._body.read(None if size < 0 else size)
        except Exception as exc:
            if not is_client_error(exc):
                raise
            raise BlobStoreError(f"reading {self._sha256} failed: {describe(exc)}") from None
        return piece

    def close(self) -> None:
        self._closed = True
        if self._body is not None:
            self._body.close()

    def __enter__(self) -> S3Object:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3BlobStore:
    def __init__(self, location: S3Location, spool_dir: Path) -> None:
        self.location = location
        self.spool_dir = spool_dir
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        # Uploads interrupted by a crash leave spool files; nothing refers to them.
        for leftover in self.spool_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self._client = client_for(location)

    def ref(self, sha256: str, size: int) -> BlobRef:
        check_sha256(sha256)
        return BlobRef(self.location, sha256, size)

    def writer(self) -> S3BlobWriter:
        return S3BlobWriter(self)

    def open(self, sha256: str) -> S3Object:
        check_sha256(sha256)
        return S3Object(self, sha256)

    def delete(self, sha256: str) -> None:
        key = self._key(sha256)
        try:
            self._client.delete_object(Bucket=self.location.bucket, Key=key)
        except Exception as exc:
            if is_missing(exc):
                return
            if not is_client_error(exc):
                raise
            raise BlobStoreError(f"deleting {key} failed: {describe(exc)}") from None

    def exists(self, sha256: str) -> bool:
        key = self._key(sha256)
        try:
            self._client.head_object(Bucket=self.location.bucket, Key=key)
        except Exception as exc:
            if is_missing(exc):
                return False
            if not is_client_error(exc):
                raise
            raise BlobStoreError(f"looking up {key} failed: {describe(exc)}") from None
        return True

    def get_body(self, sha256: str) -> Any:
        """The object's streaming body; FileNotFoundError if there is none."""
        key = self._key(sha256)
        try:
            return self._client.get_object(Bucket=self.location.bucket, Key=key)["Body"]
        except Exception as exc:
            if is_missing(exc):
                raise FileNotFoundError(f"no object {key}") from None
            if not is_client_error(exc):
                raise
            raise BlobStoreError(f"reading {key} failed: {describe(exc)}") from None

    def put(self, sha256: str, spool: BinaryIO, size: int) -> bool:
        """Stores ``size`` bytes of ``spool`` as ``sha256``; False if that content was there
        already (found first, or a concurrent writer won the ``If-None-Match``)."""
        key = self._key(sha256)
        if self.exists(sha256):
            return False
        try:
            if size <= PART_BYTES:
                spool.seek(0)
                body = _read_exactly(spool, size)
                self._client.put_object(
                    Bucket=self.location.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=size,
                    IfNoneMatch="*",
                )
            else:
                self._put_multipart(key, spool, size)
        except Exception as exc:
            if is_precondition_failed(exc):
                log.debug("content %s was stored meanwhile by another writer", sha256)
                return False
            if not is_client_error(exc):
                raise
            raise BlobStoreError(f"storing {key} failed: {describe(exc)}") from None
        return True

    def _put_multipart(self, key: str, spool: BinaryIO, size: int) -> None:
        bucket = self.location.bucket
        upload_id = self._client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        try:
            parts = []
            spool.seek(0)
            for number, start in enumerate(range(0, size, PART_BYTES), start=1):
                body = _read_exactly(spool, min(PART_BYTES, size - start))
                answer = self._client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
                del body
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            self._client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception as exc:  # the bucket's lifecycle rule cleans up what is left
                log.warning("aborting the multipart upload of %s failed: %s", key, exc)
            raise

    def _key(self, sha256: str) -> str:
        check_sha256(sha256)
        return self.location.key_for(sha256)


def _read_exactly(spool: BinaryIO, size: int) -> bytes:
    data = spool.read(size)
    if len(data) != size:  # never send a short body under a longer Content-Length
        raise BlobStoreError(f"the upload's spool file holds less than {size} more bytes")
    return data
