"""DeleteFile: the file detached from every store of its owner and deleted, in one
transaction (so no store is left holding chunks of a file that no longer exists)."""

from __future__ import annotations

import asyncio
import logging

from quiver.server.core.files import FileStore
from quiver.server.core.models import StoredFile
from quiver.server.core.principal import Principal
from quiver.server.core.status_book import StatusBook
from quiver.server.core.store_files import StoreFiles

log = logging.getLogger("quiver.server")


class FileDeletion:
    def __init__(self, book: StatusBook, files: FileStore, store_files: StoreFiles) -> None:
        self.book = book
        self.files = files
        self.store_files = store_files

    async def delete(self, principal: Principal, file_id: str) -> None:
        """NOT_FOUND for another caller's or no file. Its chunks leave the indexes, its
        queued jobs the queue and its bytes the blob store (unless another file shares
        them) after the commit, from a thread (the store may be across the network)."""
        file, unshared = await self.files.calls.run(self._delete_rows, principal, file_id)
        if unshared:
            try:
                await asyncio.to_thread(self.files.forget_bytes, file)
            except OSError as exc:  # the file is deleted; its bytes stay, unreferenced
                log.warning("deleting the bytes of %s failed: %s", file.id, exc)

    def _delete_rows(self, principal: Principal, file_id: str) -> tuple[StoredFile, bool]:
        """On a database thread: the transaction; the indexes and the queue are told on
        the loop. Returns the file and whether its bytes are no longer shared."""
        file = self.files.get_now(principal, file_id)
        with self.book.transaction() as conn:
            removed = [
                (store, self.store_files.remove(conn, store.id, file_id))
                for store in self.store_files.stores_holding(conn, principal, file_id)
            ]
            unshared = self.files.remove(conn, file)
        for store, stale in removed:
            self.files.calls.on_loop(self.store_files.after_removal, store, file_id, stale)
        return file, unshared
