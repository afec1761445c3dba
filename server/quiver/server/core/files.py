"""Uploaded files: streaming upload with limits and checksum, listing, download, deletion."""

from __future__ import annotations

import asyncio
import re
import threading

from quiver.server.core import ids
from quiver.server.core.clock import Clock, system_clock
from quiver.server.core.db_calls import DbCalls
from quiver.server.core.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from quiver.server.core.models import ListParams, Page, StoredFile
from quiver.server.core.pages import page_of
from quiver.server.core.ports import Blobs, BlobWriter
from quiver.server.core.principal import Principal
from quiver.server.core.validation import check_filename, check_purpose, raise_if
from quiver.server.core.verified_content import VerifiedContent, missing
from quiver.server.storage.interfaces import FileRepository, Storage, Tx
from quiver.server.storage.s3_client import BlobStoreError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Upload:
    """One upload in progress. ``write`` enforces the size limit as bytes arrive.

    ``write`` and ``seal`` may run in a worker thread (they hash and fsync, or send the
    bytes to object storage); ``abort`` may come from the event loop meanwhile (a cancelled
    call), so the three take a lock, and ``abort`` never waits for it: a write or seal in
    progress aborts the upload itself when it ends.
    """

    def __init__(
        self,
        files: FileStore,
        principal: Principal,
        filename: str,
        purpose: str,
        expected_sha256: str | None,
    ) -> None:
        self._files = files
        self._principal = principal
        self._filename = filename
        self._purpose = purpose
        self._expected = expected_sha256
        self._writer: BlobWriter = files.blobs.writer()
        self._lock = threading.Lock()
        self._aborted = False
        self._abort_wanted = False

    def write(self, data: bytes) -> None:
        try:
            self._write(data)
        finally:
            self._abort_if_wanted()

    def _write(self, data: bytes) -> None:
        limit = self._files.max_file_bytes
        with self._lock:
            if self._aborted:
                return
            if self._writer.size + len(data) > limit:
                self._abort()
                raise ResourceExhausted(
                    f"file is larger than the server's upload limit of {limit} bytes "
                    "(--max-file-bytes)",
                    reason="FILE_TOO_LARGE",
                )
            self._writer.write(data)

    def abort(self) -> None:
        self._abort_wanted = True
        if self._lock.acquire(blocking=False):
            try:
                self._abort()
            finally:
                self._lock.release()

    def _abort_if_wanted(self) -> None:
        """After a write or seal released the lock: an abort that came meanwhile."""
        if self._abort_wanted:
            with self._lock:
                self._abort()

    def _abort(self) -> None:
        self._aborted = True
        self._writer.abort()

    def seal(self) -> None:
        """Checks the sha256 and moves the bytes into place (fsync, or an upload to object
        storage: UNAVAILABLE if that store cannot take them)."""
        try:
            self._seal()
        finally:
            self._abort_if_wanted()

    def _seal(self) -> None:
        with self._lock:
            digest = self._writer.sha256
            if self._expected is not None and digest != self._expected:
                self._abort()
                raise InvalidArgument(
                    [
                        FieldViolation(
                            "sha256",
                            f"the received {self._writer.size} bytes hash to {digest}, "
                            f"not {self._expected}; nothing was stored",
                        )
                    ],
                    reason="CHECKSUM_MISMATCH",
                )
            try:
                self._writer.commit()
            except BlobStoreError as exc:
                self._abort()
                raise Unavailable(
                    f"the blob store could not take the file ({exc}); nothing was stored, "
                    "try again",
                    reason="BLOB_STORE_UNAVAILABLE",
                ) from None

    async def record(self) -> StoredFile:
        """After ``seal``: the file's row (written on a database thread)."""
        return await self._files.calls.run(
            self._files._insert,
            self._principal,
            self._filename,
            self._purpose,
            self._writer.size,
            self._writer.sha256,
        )

    async def finish(self) -> StoredFile:
        await asyncio.to_thread(self.seal)
        return await self.record()


class FileStore:
    def __init__(
        self,
        db: Storage,
        blobs: Blobs,
        *,
        max_file_bytes: int,
        calls: DbCalls,
        clock: Clock = system_clock,
    ) -> None:
        self.db = db
        self.calls = calls
        self.rows: FileRepository = db.files
        self.blobs = blobs
        self.max_file_bytes = max_file_bytes
        self.clock = clock

    def begin_upload(
        self, principal: Principal, filename: str, purpose: str, sha256: str
    ) -> Upload:
        violations = check_filename(filename)
        purpose, more = check_purpose(purpose)
        violations += more
        expected = sha256.lower() if sha256 else None
        if expected is not None and not _SHA256.match(expected):
            violations.append(FieldViolation("sha256", "must be 64 hexadecimal characters"))
        raise_if(violations)
        return Upload(self, principal, filename, purpose, expected)

    def _insert(
        self, principal: Principal, filename: str, purpose: str, size: int, digest: str
    ) -> StoredFile:
        file = StoredFile(
            id=ids.new_id(ids.FILE),
            bytes=size,
            created_at=int(self.clock()),
            filename=filename,
            purpose=purpose,
            sha256=digest,
        )
        with self.db.transaction() as conn:
            self.rows.insert(conn, principal.tenant, principal.subject, file)
        return file

    async def get(self, principal: Principal, file_id: str) -> StoredFile:
        return await self.calls.run(self.get_now, principal, file_id)

    def get_now(self, principal: Principal, file_id: str) -> StoredFile:
        """``get``'s body (blocking: on a database thread, or inside another body)."""
        file = self.rows.get(file_id, principal.tenant, principal.subject)
        if file is None:
            raise NotFound(f"no file with id {file_id[:80]!r}", reason="FILE_NOT_FOUND")
        return file

    async def list(
        self, principal: Principal, page: ListParams, purpose: str = ""
    ) -> Page[StoredFile]:
        return await self.calls.run(self._list, principal, page, purpose)

    def _list(self, principal: Principal, page: ListParams, purpose: str) -> Page[StoredFile]:
        return page_of(
            lambda: self.rows.page(principal.tenant, principal.subject, purpose, page),
            lambda file: file,
        )

    def remove(self, conn: Tx, file: StoredFile) -> bool:
        """Inside a transaction: deletes the file's row (DeleteFile is ``FileDeletion``,
        which detaches it first). True when no other file shares its bytes: then delete
        them with ``forget_bytes`` once the transaction has committed."""
        self.rows.delete(conn, file.id)
        return not self.rows.content_in_use(conn, file.sha256)

    def forget_bytes(self, file: StoredFile) -> None:
        self.blobs.delete(file.sha256)

    async def open_content(self, principal: Principal, file_id: str) -> VerifiedContent:
        """The file's bytes, checked against its size and sha256 as they are read."""
        return await self.calls.run(self._open_content, principal, file_id)

    def _open_content(self, principal: Principal, file_id: str) -> VerifiedContent:
        file = self.get_now(principal, file_id)
        try:
            return VerifiedContent(file, self.blobs.open(file.sha256))
        except FileNotFoundError:
            raise missing(file) from None
