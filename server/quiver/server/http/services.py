"""The core services the HTTP edge calls: the same objects the gRPC servicers get."""

from __future__ import annotations

from dataclasses import dataclass

from quiver.server.core.batches import FileBatches
from quiver.server.core.file_deletion import FileDeletion
from quiver.server.core.files import FileStore
from quiver.server.core.search import Searcher
from quiver.server.core.store_files import StoreFiles
from quiver.server.core.upload_slots import UploadSlots
from quiver.server.core.vector_stores import VectorStores
from quiver.server.http.search_forwarding import HttpSearchForwarding


@dataclass(frozen=True)
class HttpServices:
    files: FileStore
    file_deletion: FileDeletion
    uploads: UploadSlots
    stores: VectorStores
    store_files: StoreFiles
    batches: FileBatches
    searcher: Searcher
    upload_idle_timeout: float
    search_forwarding: HttpSearchForwarding | None = None
    """Searches of stores another replica owns go there (None: always answered here)."""
