"""The checks on the files once the server stopped, and the disk-full fault's record."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from quiver.server.index.hnsw import VectorIndex
from quiver.server.index.keyword import DamagedKeywordIndex, StoreKeywordIndex

from bench.soak.checks_online import Listed
from bench.soak.disk import Disk
from bench.soak.load import Soak
from bench.soak.records import Check
from bench.soak.server_log import LogFacts


def check_database(
    soak: Soak,
    db_path: Path,
    index_dir: Path,
    listed: dict[str, Listed],
    chunks_check: Check,
    index_check: Check,
    batches_check: Check,
) -> int:
    """The stopped server's SQLite file and saved indexes. Returns the number of chunks."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        for store_id, file_id, index, count in conn.execute(
            "SELECT vector_store_id, file_id, chunk_index, COUNT(*) FROM chunks "
            "GROUP BY vector_store_id, file_id, chunk_index HAVING COUNT(*) > 1"
        ):
            chunks_check.fail(f"{store_id}/{file_id}: chunk {index} stored {count} times")
        per_file: dict[tuple[str, str], list[int]] = {}
        for store_id, file_id, index in conn.execute(
            "SELECT vector_store_id, file_id, chunk_index FROM chunks"
        ):
            per_file.setdefault((store_id, file_id), []).append(index)
        for (store_id, file_id), indexes in per_file.items():
            if sorted(indexes) != list(range(len(indexes))):
                chunks_check.fail(
                    f"{store_id}/{file_id}: chunk_index {sorted(indexes)[:20]} is not 0..n-1"
                )
        statuses = {
            (s, f): status
            for s, f, status in conn.execute(
                "SELECT vector_store_id, file_id, status FROM vector_store_files"
            )
        }
        for key, status in statuses.items():
            has = key in per_file
            if status == "completed" and not has:
                chunks_check.fail(f"{key[0]}/{key[1]}: completed with no chunks")
            if status != "completed" and has:
                chunks_check.fail(
                    f"{key[0]}/{key[1]}: {status} but has {len(per_file[key])} chunks"
                )
        for key in per_file:
            if key not in statuses:
                chunks_check.fail(f"{key[0]}/{key[1]}: chunks of a file not in the store")
        for entry in listed.values():
            for file_id, f in entry.files.items():
                stored = statuses.get((entry.batch.vector_store_id, file_id))
                if stored != f.status:
                    chunks_check.fail(f"{file_id}: the API said {f.status}, SQLite says {stored}")

        total = 0
        for store_id, dim in conn.execute("SELECT id, embedding_dimensions FROM vector_stores"):
            ids = np.array(
                [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM chunks WHERE vector_store_id = ? ORDER BY id", (store_id,)
                    )
                ],
                dtype=np.int64,
            )
            total += ids.size
            path = index_dir / f"{store_id}.hnsw"
            if not path.exists():
                if ids.size:
                    index_check.fail(f"{store_id}: {ids.size} chunks but no saved index {path}")
                continue
            labels = VectorIndex.open(path, int(dim)).labels()
            missing = np.setdiff1d(ids, labels)
            extra = np.setdiff1d(labels, ids)
            if missing.size or extra.size:
                index_check.fail(
                    f"{store_id}: index lacks {missing.size} chunk ids {missing[:10].tolist()} "
                    f"and holds {extra.size} others {extra[:10].tolist()}"
                )
            index_check.notes.append(f"{store_id}: {labels.size} labels = {ids.size} chunks")

        rows = {
            request_id: (batch_id, status)
            for batch_id, request_id, status in conn.execute(
                "SELECT id, request_id, status FROM file_batches"
            )
        }
        for request_id, (batch_id, _) in rows.items():
            if request_id not in soak.sent_request_ids:
                batches_check.fail(f"{batch_id}: a batch nobody asked for ({request_id})")
            elif batch_id not in soak.batches and request_id not in soak.given_up:
                batches_check.fail(f"{batch_id}: created for {request_id}, never confirmed")
        for b in soak.batches.values():
            if b.request_id not in rows or rows[b.request_id][0] != b.batch_id:
                batches_check.fail(f"{b.batch_id}: confirmed, not in SQLite")
        return total
    finally:
        conn.close()


def check_integrity(run_dir: Path, db_path: Path) -> Check:
    check = Check("(d) SQLite integrity_check, keyword indexes and foreign keys")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            check.fail(f"integrity_check: {result[:10]}")
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            check.fail(f"foreign_key_check: {broken[:10]}")
        completed: dict[str, list[int]] = {}
        for store_id, chunk_id in conn.execute(
            "SELECT c.vector_store_id, c.id FROM chunks c JOIN vector_store_files f "
            "ON f.vector_store_id = c.vector_store_id AND f.file_id = c.file_id "
            "AND f.status = 'completed' ORDER BY c.id"
        ):
            completed.setdefault(str(store_id), []).append(int(chunk_id))
    finally:
        conn.close()
    # Each store's keyword index (tantivy) holds exactly its completed chunks, each once.
    root = db_path.parent / "keyword"
    for store_id, ids in completed.items():
        try:
            index = StoreKeywordIndex.open(root / store_id)
        except DamagedKeywordIndex as exc:
            check.fail(f"keyword index of {store_id}: {exc}")
            continue
        try:
            held = index.chunk_ids().tolist()
        finally:
            index.close()
        if held != ids:
            check.fail(
                f"keyword index of {store_id}: {len(held)} documents for {len(ids)} "
                "completed chunks (or other ids)"
            )
    check.summary = "ok" if check.passed else "broken"
    return check


def check_disk_full(load: Soak, disk: Disk, facts: LogFacts) -> Check:
    """What the disk-full fault did: writes refused with DISK_FULL (any other failure is in
    the "rpc" check), commits retried; the end checks above show they completed."""
    check = Check("disk full: writes refused with RESOURCE_EXHAUSTED/DISK_FULL, then served")
    if not disk.mounted:
        check.warn_only = True
        check.fail(f"fault skipped: {disk.why_not}")
        return check
    retries = sum(n for m, n in facts.warnings.items() if m.startswith("disk full committing"))
    check.summary = (
        f"{len(disk.events)} episodes; refused: {dict(sorted(load.refused.items())) or 'none'}; "
        f"{retries} ingest commits retried on the full disk (server log)"
    )
    check.notes.extend(disk.events)
    if disk.events and not load.refused:
        check.warn_only = True
        check.fail("the disk was filled, but no RPC was refused with DISK_FULL")
    return check
