"""A stored file's bytes, read back and checked against what was recorded at upload."""

from __future__ import annotations

import hashlib

from quiver.server.core.errors import DataLoss, Unavailable
from quiver.server.core.models import StoredFile
from quiver.server.core.ports import BlobReader


class VerifiedContent:
    """Reads a file's blob piece by piece, hashing as it goes. A blob longer or shorter than
    the recorded size, or whose sha256 differs, raises ``DataLoss`` (at the piece that shows
    it; a changed byte shows at the end, so a reader must keep nothing from a stream that does
    not end cleanly)."""

    def __init__(self, file: StoredFile, stream: BlobReader) -> None:
        self.file = file
        self._stream = stream
        self._hash = hashlib.sha256()
        self._read = 0
        self._done = False

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" once the whole file was read and matched its sha256."""
        if self._done:
            return b""
        try:
            piece = self._stream.read(size)
        except FileNotFoundError:  # a blob store that opens lazily (S3) finds out here
            raise missing(self.file) from None
        except OSError as exc:
            raise Unavailable(
                f"the stored content of {self.file.id} cannot be read now: {exc}",
                reason="BLOB_STORE_UNAVAILABLE",
            ) from None
        self._read += len(piece)
        self._hash.update(piece)
        if self._read > self.file.bytes:
            raise self._loss(f"holds more than the {self.file.bytes} bytes uploaded")
        if not piece:
            if self._read != self.file.bytes:
                raise self._loss(f"holds {self._read} of the {self.file.bytes} bytes uploaded")
            if self._hash.hexdigest() != self.file.sha256:
                raise self._loss("does not match the sha256 recorded at upload (damaged on disk)")
            self._done = True
        return piece

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> VerifiedContent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loss(self, what: str) -> DataLoss:
        return DataLoss(
            f"the stored content of {self.file.id} {what}; the file must be uploaded again",
            reason="CONTENT_DAMAGED",
        )


def missing(file: StoredFile) -> DataLoss:
    return DataLoss(
        f"the stored content of {file.id} is missing from the blob store; "
        "the file must be uploaded again",
        reason="CONTENT_MISSING",
    )
