"""An upload's bytes spooled to a local temp file while they are hashed: the content address
(their sha256) is known only at the end. The blob stores' writers (``blobs.py``,
``s3_blobs.py``) add the ``commit`` that puts the spool where the content belongs."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import BinaryIO


class HashingSpool:
    """Streams bytes to ``<directory>/upload-<random>`` while hashing them; ``abort`` closes
    and removes the temp file (a no-op once done)."""

    def __init__(self, directory: Path) -> None:
        self.tmp_path = directory / f"upload-{secrets.token_hex(8)}"
        self._file: BinaryIO = open(self.tmp_path, "w+b")  # noqa: SIM115 - closed in commit/abort
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.tmp_path.unlink(missing_ok=True)
