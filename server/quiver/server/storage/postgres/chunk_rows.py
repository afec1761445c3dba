"""The ``chunks`` table in PostgreSQL: a file's chunk rows written inside its completing
transaction (ids reserved beforehand, so its vectors are indexed before that transaction
opens), write slices of their own (tools and older callers), deletes, and the reads of
search and recovery."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
from quiver.server.core.models import FileStatus
from quiver.server.storage.postgres.connection import Conn, PgDatabase, conn_of, execute
from quiver.server.storage.rows import ChunkHit, NotWanted, Owner, Tx


def _still_wanted(conn: Conn, owner: Owner) -> bool:
    """Locks the store file's row (FOR SHARE, until the slice commits), so a detach, a
    re-attach or a settle waits for the slice instead of racing it."""
    row = execute(
        conn,
        "SELECT f.status, f.generation, COALESCE(b.cancel_requested, false) AS cancelled "
        "FROM vector_store_files f LEFT JOIN file_batches b ON b.id = %s "
        "WHERE f.vector_store_id = %s AND f.file_id = %s FOR SHARE OF f",
        (owner.batch_id, owner.store_id, owner.file_id),
    ).fetchone()
    return (
        row is not None
        and row["status"] == "in_progress"
        and row["generation"] == owner.generation
        and not row["cancelled"]
    )


IN_COMMIT_BYTES = 4 << 20
"""Bytes of chunk rows per INSERT statement inside a completing transaction (vectors and
texts): each statement stays far below the statement timeout, and the next follows at once
(the rows are in memory), so the transaction never idles."""
MAX_IN_COMMIT_ROWS = 2_000


class PgChunkRows:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def in_commit(self) -> PgChunkRows:
        """A file's chunks are inserted in its completing transaction here."""
        return self

    def reserve_ids(self, count: int) -> npt.NDArray[np.int64]:
        """``count`` new chunk ids from the table's sequence (never handed out again),
        ascending; no row is written."""
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        rows = self.db.rows(
            "SELECT nextval(pg_get_serial_sequence('chunks', 'id')) AS id "
            "FROM generate_series(1, %s)",
            (count,),
        )
        return np.sort(np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows)))

    def insert_reserved(
        self,
        tx: Tx,
        owner: Owner,
        ids: npt.NDArray[np.int64],
        texts: list[str],
        token_counts: list[int],
        vectors: npt.NDArray[np.float32],
    ) -> None:
        """Inserts every chunk of the file, with its reserved id, inside ``tx`` (the file's
        completing transaction), a few MB per statement, the vectors sent as binary bytea
        (``%b``: text format would hex-encode them; 20,000 chunks of 512 floats and 2 KB of
        text commit in 3.1 s instead of 5.4 s on an idle 2-core machine, bench/pg_commit.py)."""
        if len(texts) != len(ids) or len(token_counts) != len(ids) or len(vectors) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(texts)} chunks")
        conn = conn_of(tx)
        row_bytes = max(1, vectors.itemsize * (vectors.shape[1] if vectors.ndim == 2 else 1))
        start = 0
        while start < len(ids):
            end, size = start, 0
            while end < len(ids) and end - start < MAX_IN_COMMIT_ROWS and size < IN_COMMIT_BYTES:
                size += row_bytes + len(texts[end])
                end += 1
            execute(
                conn,
                "INSERT INTO chunks (id, vector_store_id, file_id, tenant, subject, "
                "chunk_index, token_count, text, vector) SELECT u.id, %s, %s, %s, %s, u.i, u.n, "
                "u.t, u.v FROM unnest(%s::bigint[], %s::int[], %s::int[], %s::text[], "
                "%b::bytea[]) AS u(id, i, n, t, v)",
                (
                    owner.store_id,
                    owner.file_id,
                    owner.tenant,
                    owner.subject,
                    [int(i) for i in ids[start:end]],
                    list(range(start, end)),
                    token_counts[start:end],
                    # PostgreSQL text holds no NUL character.
                    [t.replace("\x00", "\ufffd") for t in texts[start:end]],
                    [vectors[i].tobytes() for i in range(start, end)],
                ),
            )
            start = end

    def delete_reserved(self, tx: Tx, ids: npt.NDArray[np.int64]) -> None:
        """Inside ``tx``: the rows ``insert_reserved`` wrote there, deleted again."""
        execute(
            conn_of(tx),
            "DELETE FROM chunks WHERE id = ANY(%s::bigint[])",
            ([int(i) for i in ids],),
        )

    def insert_slice(
        self,
        owner: Owner,
        texts: list[str],
        token_counts: list[int],
        vectors: npt.NDArray[np.float32],
        start: int,
        end: int,
    ) -> npt.NDArray[np.int64]:
        """Chunks ``start:end`` in one transaction (one statement), if the job is still
        wanted (else ``NotWanted``); returns their ids in chunk order."""
        with self.db.transaction() as conn:
            if not _still_wanted(conn, owner):
                raise NotWanted(owner.file_id)
            rows = execute(
                conn,
                "INSERT INTO chunks (vector_store_id, file_id, tenant, subject, chunk_index, "
                "token_count, text, vector) SELECT %s, %s, %s, %s, i, n, t, v "
                "FROM unnest(%s::int[], %s::int[], %s::text[], %s::bytea[]) AS u(i, n, t, v) "
                "ORDER BY i RETURNING id, chunk_index",
                (
                    owner.store_id,
                    owner.file_id,
                    owner.tenant,
                    owner.subject,
                    list(range(start, end)),
                    token_counts[start:end],
                    # PostgreSQL text holds no NUL character.
                    [t.replace("\x00", "\ufffd") for t in texts[start:end]],
                    [vectors[i].tobytes() for i in range(start, end)],
                ),
            ).fetchall()
        by_index = {int(r["chunk_index"]): int(r["id"]) for r in rows}
        if len(by_index) != end - start:
            raise RuntimeError(f"{len(by_index)} chunk ids for {end - start} rows")
        return np.array([by_index[i] for i in range(start, end)], dtype=np.int64)

    def delete_slice(self, ids: list[int]) -> None:
        with self.db.transaction() as conn:
            execute(conn, "DELETE FROM chunks WHERE id = ANY(%s::bigint[])", (ids,))

    def delete_leftovers_slice(self, owner: Owner, rows: int) -> list[int] | None:
        with self.db.transaction() as conn:
            current = execute(
                conn,
                "SELECT status, generation FROM vector_store_files "
                "WHERE vector_store_id = %s AND file_id = %s FOR SHARE",
                (owner.store_id, owner.file_id),
            ).fetchone()
            if current is None or (current["status"], current["generation"]) != (
                "in_progress",
                owner.generation,
            ):
                return None
            return [
                int(r["id"])
                for r in execute(
                    conn,
                    "DELETE FROM chunks WHERE id IN (SELECT id FROM chunks "
                    "WHERE vector_store_id = %s AND file_id = %s LIMIT %s) RETURNING id",
                    (owner.store_id, owner.file_id, rows),
                ).fetchall()
            ]

    def delete_of_slice(self, store_id: str, file_id: str | None, rows: int) -> int:
        where = "vector_store_id = %s"
        params: tuple[object, ...] = (store_id,)
        if file_id is not None:
            where, params = "vector_store_id = %s AND file_id = %s", (store_id, file_id)
        with self.db.transaction() as conn:
            return execute(
                conn,
                f"DELETE FROM chunks WHERE id IN (SELECT id FROM chunks WHERE {where} LIMIT %s)",
                (*params, rows),
            ).rowcount

    def delete_of_file(self, tx: Tx, store_id: str, file_id: str) -> list[int]:
        return [
            int(r["id"])
            for r in execute(
                tx,
                "DELETE FROM chunks WHERE vector_store_id = %s AND file_id = %s RETURNING id",
                (store_id, file_id),
            ).fetchall()
        ]

    def texts_from(self, store_id: str, file_id: str, start: int) -> Iterator[tuple[int, str]]:
        rows = self.db.rows(
            "SELECT chunk_index, text FROM chunks WHERE vector_store_id = %s AND file_id = %s "
            "AND chunk_index >= %s ORDER BY chunk_index",
            (store_id, file_id, start),
        )
        return ((int(r["chunk_index"]), str(r["text"])) for r in rows)

    def ids_of_files(self, store_id: str, file_ids: list[str]) -> list[int]:
        return [
            int(r["id"])
            for r in self.db.rows(
                "SELECT id FROM chunks WHERE vector_store_id = %s AND file_id = ANY(%s)",
                (store_id, file_ids),
            )
        ]

    def ids_by_file(self, store_id: str, file_ids: list[str] | None = None) -> dict[str, list[int]]:
        sql = "SELECT file_id, id FROM chunks WHERE vector_store_id = %s"
        params: tuple[object, ...] = (store_id,)
        if file_ids is not None:
            sql += " AND file_id = ANY(%s)"
            params += (file_ids,)
        out: dict[str, list[int]] = {}
        for r in self.db.rows(sql, params):
            out.setdefault(r["file_id"], []).append(int(r["id"]))
        return out

    def vectors_from_thread(self, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        return [
            (int(r["id"]), bytes(r["vector"]))
            for r in self.db.rows(
                "SELECT id, vector FROM chunks WHERE id = ANY(%s::bigint[])",
                ([int(i) for i in ids],),
            )
        ]

    def stores_deleted_from_thread(self) -> list[str]:
        return [
            r["vector_store_id"]
            for r in self.db.rows(
                "SELECT DISTINCT c.vector_store_id FROM chunks c WHERE NOT EXISTS "
                "(SELECT 1 FROM vector_stores s WHERE s.id = c.vector_store_id)"
            )
        ]

    def settled_with_chunks(self) -> list[tuple[str, str]]:
        return [
            (r["vector_store_id"], r["file_id"])
            for r in self.db.rows(
                "SELECT f.vector_store_id, f.file_id FROM vector_store_files f "
                "WHERE f.status IN (%s, %s) AND EXISTS (SELECT 1 FROM chunks c "
                "WHERE c.vector_store_id = f.vector_store_id AND c.file_id = f.file_id)",
                (FileStatus.CANCELLED.value, FileStatus.FAILED.value),
            )
        ]

    def ids_of_store(self, store_id: str) -> npt.NDArray[np.int64]:
        rows = self.db.rows(
            "SELECT id FROM chunks WHERE vector_store_id = %s ORDER BY id", (store_id,)
        )
        return np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))

    def completed_ids(self, store_id: str) -> npt.NDArray[np.int64]:
        """The ids of the chunks of the store's completed files, ascending (from a thread)."""
        rows = self.db.rows(
            "SELECT c.id FROM chunks c JOIN vector_store_files f "
            "ON f.vector_store_id = c.vector_store_id AND f.file_id = c.file_id "
            "AND f.status = 'completed' WHERE c.vector_store_id = %s ORDER BY c.id",
            (store_id,),
        )
        return np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))

    def keyword_rows(self, ids: Sequence[int]) -> list[tuple[int, str, str]]:
        """(id, file id, text) of these chunks (those that exist), for the keyword index."""
        if not ids:
            return []
        return [
            (int(r["id"]), str(r["file_id"]), str(r["text"]))
            for r in self.db.rows(
                "SELECT id, file_id, text FROM chunks WHERE id = ANY(%s::bigint[])",
                ([int(i) for i in ids],),
            )
        ]

    def vectors(self, ids: Sequence[int]) -> dict[int, bytes]:
        return dict(self.vectors_from_thread(ids))

    def hits(self, store_id: str, ids: Sequence[int]) -> dict[int, ChunkHit]:
        return {
            int(r["id"]): ChunkHit(
                int(r["id"]), r["file_id"], r["text"], dict(r["attributes"]), r["filename"]
            )
            for r in self.db.rows(
                # The chunks first, by primary key (whatever the statistics say).
                "WITH c AS MATERIALIZED (SELECT id, vector_store_id, file_id, text "
                "FROM chunks WHERE id = ANY(%s::bigint[]) AND vector_store_id = %s) "
                "SELECT c.id, c.file_id, c.text, f.attributes, files.filename FROM c "
                "JOIN vector_store_files f ON f.vector_store_id = c.vector_store_id "
                "AND f.file_id = c.file_id AND f.status = 'completed' "
                "JOIN files ON files.id = c.file_id",
                ([int(i) for i in ids], store_id),
            )
        }
