"""The per-store vector index (hnswlib) and its readers/writer lock; no gRPC here."""

from quiver.server.index.hnsw import VectorIndex
from quiver.server.index.rwlock import RWLock

__all__ = ["RWLock", "VectorIndex"]
