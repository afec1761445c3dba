"""Keyword indexes as earlier releases wrote them (index/keyword.py's schema before its
``length`` and ``file_key`` fields), for the tests that they are refused and rebuilt."""

from __future__ import annotations

from pathlib import Path

import tantivy
from quiver.server.index.keyword import ANALYZER, StoreKeywordIndex, analyzer


def write_older_index(path: Path, *, before: str) -> None:
    """One chunk (id 1 of ``file-1``) in an index without ``before`` (``"length"``: neither
    field; ``"file_key"``: ``length`` but not ``file_key``), replacing what ``path`` held."""
    StoreKeywordIndex.remove(path)
    path.mkdir(parents=True)
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("chunk_id", indexed=True, fast=True)
    builder.add_text_field("file_id", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("text", tokenizer_name=ANALYZER, index_option="position")
    if before == "file_key":
        builder.add_unsigned_field("length", fast=True)
    old = tantivy.Index(builder.build(), path=str(path))
    old.register_tokenizer(ANALYZER, analyzer())
    writer = old.writer(heap_size=15_000_000, num_threads=1)
    doc = tantivy.Document()
    doc.add_unsigned("chunk_id", 1)
    doc.add_text("file_id", "file-1")
    doc.add_text("text", "the quick brown fox")
    if before == "file_key":
        doc.add_unsigned("length", 4)
    writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()
