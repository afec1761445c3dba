"""The ``chunks`` table: short write slices from threads, deletes, and the reads of search
and recovery (and of the keyword index's rebuild, which is not in the database)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
from quiver.server.core.models import FileStatus
from quiver.server.storage.database import Database
from quiver.server.storage.rows import ChunkHit, NotWanted, Owner, Tx, conn_of


def _still_wanted(conn: sqlite3.Connection, owner: Owner) -> bool:
    row = conn.execute(
        "SELECT f.status, f.generation, COALESCE(b.cancel_requested, 0) AS cancelled "
        "FROM vector_store_files f LEFT JOIN file_batches b ON b.id = ? "
        "WHERE f.vector_store_id = ? AND f.file_id = ?",
        (owner.batch_id, owner.store_id, owner.file_id),
    ).fetchone()
    return (
        row is not None
        and row["status"] == "in_progress"
        and row["generation"] == owner.generation
        and not row["cancelled"]
    )


class ChunkRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    def in_commit(self) -> None:
        """None: here a file's chunks are written in slices of their own before its
        completing transaction (one transaction would hold SQLite's single write lock, which
        the event loop's writes wait for, as long as the whole file takes)."""
        return None

    # -- write slices (blocking: from a thread, each one short transaction) ----------------------

    def insert_slice(
        self,
        owner: Owner,
        texts: list[str],
        token_counts: list[int],
        vectors: npt.NDArray[np.float32],
        start: int,
        end: int,
    ) -> npt.NDArray[np.int64]:
        """Chunks ``start:end`` in one transaction, if the job is still wanted (else
        ``NotWanted``); returns their ids in order."""
        with self.db.slice() as conn:
            if not _still_wanted(conn, owner):
                raise NotWanted(owner.file_id)
            return self._insert(conn, owner, texts, token_counts, vectors, start, end)

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        owner: Owner,
        texts: list[str],
        token_counts: list[int],
        vectors: npt.NDArray[np.float32],
        start: int,
        end: int,
    ) -> npt.NDArray[np.int64]:
        """One executemany; the ids follow the table's AUTOINCREMENT sequence, which nobody
        else can move inside this (BEGIN IMMEDIATE) transaction."""
        before = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
        first = int(before[0]) if before else 0
        conn.executemany(
            "INSERT INTO chunks (vector_store_id, file_id, tenant, subject, chunk_index, "
            "token_count, text, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    owner.store_id,
                    owner.file_id,
                    owner.tenant,
                    owner.subject,
                    i,
                    token_counts[i],
                    texts[i],
                    vectors[i].tobytes(),
                )
                for i in range(start, end)
            ],
        )
        after = int(
            conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()[0]
        )
        if after - first != end - start:
            raise RuntimeError(f"chunk ids are not contiguous ({first}..{after})")
        return np.arange(first + 1, after + 1, dtype=np.int64)

    def delete_slice(self, ids: list[int]) -> None:
        """Deletes these chunks (those already gone are skipped) in one transaction."""
        with self.db.slice() as conn:
            marks = ",".join("?" * len(ids))
            conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", ids)

    def delete_leftovers_slice(self, owner: Owner, rows: int) -> list[int] | None:
        """Deletes up to ``rows`` chunks of ``owner``'s store file in one transaction, as long
        as the file is in progress with the owner's generation (else None); returns their
        ids."""
        with self.db.slice() as conn:
            current = conn.execute(
                "SELECT status, generation FROM vector_store_files "
                "WHERE vector_store_id = ? AND file_id = ?",
                (owner.store_id, owner.file_id),
            ).fetchone()
            if current is None or (current["status"], current["generation"]) != (
                "in_progress",
                owner.generation,
            ):
                return None
            return [
                int(r[0])
                for r in conn.execute(
                    "DELETE FROM chunks WHERE id IN (SELECT id FROM chunks "
                    f"WHERE vector_store_id = ? AND file_id = ? LIMIT {rows}) RETURNING id",
                    (owner.store_id, owner.file_id),
                ).fetchall()
            ]

    def delete_of_slice(self, store_id: str, file_id: str | None, rows: int) -> int:
        """Deletes up to ``rows`` chunks of the store (of one of its files if ``file_id``)
        in one transaction; returns how many."""
        where = "vector_store_id = ?"
        params: tuple[str, ...] = (store_id,)
        if file_id is not None:
            where, params = "vector_store_id = ? AND file_id = ?", (store_id, file_id)
        with self.db.slice() as conn:
            n: int = conn.execute(
                f"DELETE FROM chunks WHERE id IN (SELECT id FROM chunks WHERE {where} "
                f"LIMIT {rows})",
                params,
            ).rowcount
            return n

    # -- inside the event loop's transaction -----------------------------------------------------

    def delete_of_file(self, tx: Tx, store_id: str, file_id: str) -> list[int]:
        """Deletes a store file's chunks; returns their ids (for the caller to drop from the
        index once the transaction has committed)."""
        return [
            r[0]
            for r in conn_of(tx).execute(
                "DELETE FROM chunks WHERE vector_store_id = ? AND file_id = ? RETURNING id",
                (store_id, file_id),
            )
        ]

    # -- reads -----------------------------------------------------------------------------------

    def texts_from(self, store_id: str, file_id: str, start: int) -> Iterator[tuple[int, str]]:
        """(chunk_index, text) of the file's chunks from ``start`` on, in order (lazily)."""
        rows = self.db.execute(
            "SELECT chunk_index, text FROM chunks WHERE vector_store_id = ? AND file_id = ? "
            "AND chunk_index >= ? ORDER BY chunk_index",
            (store_id, file_id, start),
        )
        return ((int(index), str(text)) for index, text in rows)

    def ids_of_files(self, store_id: str, file_ids: list[str]) -> list[int]:
        """The ids of these files' chunks in the store. Blocking: from a thread."""
        return [
            r[0]
            for r in self.db.reader().execute(
                "SELECT id FROM chunks WHERE vector_store_id = ? "
                "AND file_id IN (SELECT value FROM json_each(?))",
                (store_id, json.dumps(file_ids)),
            )
        ]

    def ids_by_file(self, store_id: str, file_ids: list[str] | None = None) -> dict[str, list[int]]:
        """The ids of the store's chunks (of those files only, if ``file_ids``), by file.
        Blocking: from a thread."""
        sql = "SELECT file_id, id FROM chunks WHERE vector_store_id = ?"
        params: tuple[str, ...] = (store_id,)
        if file_ids is not None:
            sql += " AND file_id IN (SELECT value FROM json_each(?))"
            params = (store_id, json.dumps(file_ids))
        out: dict[str, list[int]] = {}
        for file_id, chunk_id in self.db.reader().execute(sql, params):
            out.setdefault(file_id, []).append(int(chunk_id))
        return out

    def vectors_from_thread(self, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        """(id, stored float32 vector bytes) of these chunks. Blocking: from a thread."""
        marks = ",".join("?" * len(ids))
        return [
            (int(i), blob)
            for i, blob in self.db.reader().execute(
                f"SELECT id, vector FROM chunks WHERE id IN ({marks})", list(ids)
            )
        ]

    def stores_deleted_from_thread(self) -> list[str]:
        """The stores that have chunks but no row any more (deleted before their chunks
        were). Blocking: from a thread."""
        return [
            r[0]
            for r in self.db.reader()
            .execute(
                "SELECT DISTINCT vector_store_id FROM chunks "
                "WHERE vector_store_id NOT IN (SELECT id FROM vector_stores)"
            )
            .fetchall()
        ]

    def settled_with_chunks(self) -> list[tuple[str, str]]:
        """The (store, file) of files ended other than completed (cancelled, failed) that
        still have chunk rows: an attempt's rows, left when the server died between the
        file's settling and their deletion. Blocking: from a thread."""
        return [
            (r[0], r[1])
            for r in self.db.reader()
            .execute(
                "SELECT f.vector_store_id, f.file_id FROM vector_store_files f "
                "WHERE f.status IN (?, ?) AND EXISTS (SELECT 1 FROM chunks c "
                "WHERE c.vector_store_id = f.vector_store_id AND c.file_id = f.file_id)",
                (FileStatus.CANCELLED.value, FileStatus.FAILED.value),
            )
            .fetchall()
        ]

    def ids_of_store(self, store_id: str) -> npt.NDArray[np.int64]:
        """The ids of the store's chunks, ascending."""
        return np.fromiter(
            (
                r[0]
                for r in self.db.execute(
                    "SELECT id FROM chunks WHERE vector_store_id = ? ORDER BY id", (store_id,)
                )
            ),
            dtype=np.int64,
        )

    def completed_ids(self, store_id: str) -> npt.NDArray[np.int64]:
        """The ids of the chunks of the store's completed files, ascending. Blocking: from
        a thread."""
        return np.fromiter(
            (
                r[0]
                for r in self.db.reader().execute(
                    "SELECT c.id FROM chunks c JOIN vector_store_files f "
                    "ON f.vector_store_id = c.vector_store_id AND f.file_id = c.file_id "
                    "AND f.status = 'completed' WHERE c.vector_store_id = ? ORDER BY c.id",
                    (store_id,),
                )
            ),
            dtype=np.int64,
        )

    def keyword_rows(self, ids: Sequence[int]) -> list[tuple[int, str, str]]:
        """(id, file id, text) of these chunks (those that exist). Blocking: from a thread."""
        return [
            (int(i), str(f), str(t))
            for i, f, t in self.db.reader().execute(
                "SELECT id, file_id, text FROM chunks WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([int(i) for i in ids]),),
            )
        ]

    def vectors(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The stored float32 vector bytes of these chunks (those that exist), by id."""
        marks = ",".join("?" * len(ids))
        return {
            r[0]: r[1]
            for r in self.db.execute(
                f"SELECT id, vector FROM chunks WHERE id IN ({marks})", tuple(ids)
            )
        }

    def hits(self, store_id: str, ids: Sequence[int]) -> dict[int, ChunkHit]:
        """Those of the chunks that belong to a completed file of the store, by id."""
        marks = ",".join("?" * len(ids))
        return {
            r["id"]: ChunkHit(
                r["id"], r["file_id"], r["text"], json.loads(r["attributes"]), r["filename"]
            )
            for r in self.db.execute(
                "SELECT c.id, c.file_id, c.text, f.attributes, files.filename FROM chunks c "
                "JOIN vector_store_files f ON f.vector_store_id = c.vector_store_id "
                "AND f.file_id = c.file_id AND f.status = 'completed' "
                "JOIN files ON files.id = c.file_id "
                f"WHERE c.vector_store_id = ? AND c.id IN ({marks})",
                (store_id, *ids),
            )
        }
