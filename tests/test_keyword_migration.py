"""An older data directory, whose SQLite database kept an FTS5 index of the chunks by
trigger, still opens: the triggers and tables are dropped (the keyword index is now the
per-store tantivy cache, rebuilt from the chunk rows at start), and chunks can be written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from quiver.server.storage.database import Database

OLD_FTS = """
CREATE VIRTUAL TABLE chunks_fts USING fts5 (
    text, content='chunks', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE VIRTUAL TABLE chunks_vocab USING fts5vocab (chunks_fts, row);
CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""

INSERT = (
    "INSERT INTO chunks (vector_store_id, file_id, tenant, subject, chunk_index, token_count, "
    "text, vector) VALUES ('vs_1', 'file-1', 't', 's', ?, 1, ?, x'00000000')"
)


def names(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


def test_an_old_database_with_fts5_opens_without_it(tmp_path: Path) -> None:
    path = tmp_path / "quiver.sqlite3"
    Database(path).close()
    conn = sqlite3.connect(path)
    conn.executescript(OLD_FTS)
    conn.execute(INSERT, (0, "an old chunk"))
    conn.commit()
    conn.close()
    assert {"chunks_fts", "chunks_fts_insert", "chunks_vocab"} <= names(path)

    db = Database(path)
    try:
        with db.transaction() as tx:
            tx.execute(INSERT, (1, "a new chunk"))
            tx.execute("DELETE FROM chunks WHERE chunk_index = 0")
        texts = [r[0] for r in db.execute("SELECT text FROM chunks")]
    finally:
        db.close()
    assert texts == ["a new chunk"]
    assert not {n for n in names(path) if "fts" in n or "vocab" in n}
