"""File bytes on disk, content-addressed by sha256 and written atomically: in the data
directory (the default) or in a directory every replica shares (``--blobs /dir``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

from quiver.server.storage.blob_location import BlobRef, DirLocation, check_sha256
from quiver.server.storage.blob_spool import HashingSpool

STALE_UPLOAD_SECONDS = 24 * 3600.0
"""In a shared directory, a temp file untouched this long is a crashed replica's leftover
(the others' uploads in progress are younger): removed at start."""


class BlobWriter(HashingSpool):
    """Streams bytes to a temp file while hashing them; ``commit`` moves it into place."""

    def __init__(self, store: BlobStore) -> None:
        super().__init__(store.tmp_dir)
        self._store = store

    def commit(self) -> str:
        """fsync, then rename to ``blobs/ab/<sha256>`` (a no-op if that content exists)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self.sha256
        final = self._store.path_for(digest)
        if final.exists():
            self.tmp_path.unlink(missing_ok=True)
        else:
            # Two replicas storing the same content both rename: same bytes, either wins.
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp_path, final)
            _fsync_dir(final.parent)
        return digest


class BlobStore:
    def __init__(self, root: Path, *, shared: bool = False) -> None:
        self.root = root
        self.location = DirLocation(str(root), shared=shared)
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Uploads interrupted by a crash leave temp files; nothing refers to them. In a
        # shared directory the young ones may be other replicas' uploads in progress.
        stale_before = time.time() - STALE_UPLOAD_SECONDS
        for leftover in self.tmp_dir.iterdir():
            try:
                if not shared or leftover.stat().st_mtime < stale_before:
                    leftover.unlink(missing_ok=True)
            except FileNotFoundError:
                continue  # another replica removed it first

    def path_for(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def ref(self, sha256: str, size: int) -> BlobRef:
        """The blob's address for an ingest worker (which reads the file by path)."""
        check_sha256(sha256)
        return BlobRef(self.location, sha256, size)

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path_for(sha256), "rb")

    def read(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
