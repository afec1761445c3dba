"""Persistence: SQLite (WAL) for metadata, chunks and text; content-addressed blobs on disk."""
