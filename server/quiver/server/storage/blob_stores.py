"""The blob store a ``--blobs`` location names, opened and checked at start."""

from __future__ import annotations

from pathlib import Path

from quiver.server.storage.blob_location import BlobLocation, DirLocation
from quiver.server.storage.blobs import BlobStore
from quiver.server.storage.s3_blobs import S3BlobStore
from quiver.server.storage.s3_client import BlobStoreError, check_bucket


def open_blob_store(location: BlobLocation, data_dir: Path) -> BlobStore | S3BlobStore:
    """A directory's store (created if missing), or a bucket's (which must exist and let
    these credentials in; uploads are spooled under ``data_dir/blobs/tmp``). ValueError
    naming ``--blobs`` when it cannot be used."""
    if isinstance(location, DirLocation):
        root = Path(location.root)
        try:
            return BlobStore(root, shared=location.shared)
        except OSError as exc:
            raise ValueError(f"--blobs {root}: cannot use that directory ({exc})") from None
    try:
        check_bucket(location)
    except BlobStoreError as exc:
        raise ValueError(str(exc)) from None
    return S3BlobStore(location, data_dir / "blobs" / "tmp")
