"""A blob's bytes read by its address (``BlobRef``), wherever the reader runs: an ingest
worker process here, or a task on another machine that sees the same directory or bucket.

From a directory: the file. From S3: a GET streamed in ``PIECE`` pieces to an anonymous temp
file (hashed on the way), then read back whole — the reader holds the file's bytes once,
never a second copy of pieces. Missing content raises FileNotFoundError; content whose size or
sha256 differs from its address, or an object store that cannot be read, ``BlobStoreError``.
"""

from __future__ import annotations

import hashlib
import tempfile

from quiver.server.storage.blob_location import BlobRef, DirLocation, check_sha256
from quiver.server.storage.s3_client import (
    BlobStoreError,
    client_for,
    describe,
    is_client_error,
    is_missing,
)

PIECE = 1024 * 1024


def read_blob(ref: BlobRef) -> bytes:
    check_sha256(ref.sha256)
    location = ref.location
    if isinstance(location, DirLocation):
        with open(location.path_for(ref.sha256), "rb") as f:
            return f.read()
    client = client_for(location)
    key = location.key_for(ref.sha256)
    try:
        body = client.get_object(Bucket=location.bucket, Key=key)["Body"]
    except Exception as exc:
        if is_missing(exc):
            raise FileNotFoundError(f"no object {key}") from None
        if not is_client_error(exc):
            raise
        raise BlobStoreError(f"reading {key} failed: {describe(exc)}") from None
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile(prefix="quiver-blob-") as spool:
        try:
            with body:
                while piece := body.read(PIECE):
                    digest.update(piece)
                    size += len(piece)
                    if size > ref.size:
                        break
                    spool.write(piece)
        except Exception as exc:
            if not is_client_error(exc):
                raise
            raise BlobStoreError(f"reading {key} failed: {describe(exc)}") from None
        if size != ref.size or digest.hexdigest() != ref.sha256:
            raise BlobStoreError(
                f"the object {key} does not hold the {ref.size} bytes uploaded with that "
                "sha256 (damaged); the file must be uploaded again"
            )
        spool.seek(0)
        return spool.read()
