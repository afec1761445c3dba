"""A local file stored as a content-addressed blob, for handing straight to an ingest worker."""

from __future__ import annotations

from pathlib import Path

from quiver.server.storage.blob_location import BlobRef
from quiver.server.storage.blobs import BlobStore

PIECE = 1024 * 1024


def blob_of(path: Path, root: Path | None = None) -> BlobRef:
    """Copies ``path`` into the blob directory ``root`` (default: ``blobs/`` beside it)."""
    store = BlobStore(root or path.parent / "blobs")
    writer = store.writer()
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            writer.write(piece)
    digest = writer.commit()
    return store.ref(digest, writer.size)
