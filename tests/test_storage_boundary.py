"""The core reaches the database only through storage/'s repositories.

The source of ``quiver.server.core`` may hold no SQL and nothing SQLite-specific:
no ``import sqlite3``, no ``.execute(``, no SQL string literal, none of SQLite's own words
(``sqlite_sequence``, ``json_each``, FTS5's ``MATCH``/``bm25``, ``BEGIN IMMEDIATE``).
``storage/pagination.py`` does not import the core. And the existing parts implement the
core's Protocols (mypy checks the typed functions at the bottom; the test calls them).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from quiver.server.core import ports
from quiver.server.index.hnsw import VectorIndex
from quiver.server.index.keyword import StoreKeywordIndex
from quiver.server.index.keyword_manager import KeywordIndexes
from quiver.server.index.manager import IndexManager
from quiver.server.ingest.pool import IngestPool
from quiver.server.storage import interfaces
from quiver.server.storage.batch_rows import BatchRows
from quiver.server.storage.blobs import BlobStore
from quiver.server.storage.chunk_rows import ChunkRows
from quiver.server.storage.database import Database
from quiver.server.storage.file_rows import FileRows
from quiver.server.storage.store_file_rows import StoreFileRows
from quiver.server.storage.vector_store_rows import VectorStoreRows

SERVER = Path(__file__).resolve().parent.parent / "server" / "quiver" / "server"
CORE = SERVER / "core"

_SQL = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|PRAGMA|BEGIN|COMMIT|"
    r"ROLLBACK|WITH)\b"
    r"|\b(FROM|INTO|WHERE|JOIN)\s+\w+|\bRETURNING\b"
    r"|sqlite_sequence|json_each|\bMATCH\s*\?|bm25\(|BEGIN IMMEDIATE|_fts\b|fts5",
)
_CALLS = {"execute", "executemany", "executescript", "fetchone", "fetchall"}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    function: str
    what: str

    def __str__(self) -> str:
        return f"core/{self.file}:{self.line} ({self.function}): {self.what}"


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the string constants that are docstrings (prose may name SQL words)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for i, stmt in enumerate(body):
            # a module/class/function docstring, or an attribute docstring after an assignment
            first = i == 0 and isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            after_assign = i > 0 and isinstance(body[i - 1], ast.Assign | ast.AnnAssign)
            if (
                (first or after_assign)
                and isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                out.add(id(stmt.value))
    return out


def _functions(tree: ast.AST) -> dict[int, str]:
    """For each node id, the name of the innermost function holding it."""
    where: dict[int, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = (
                child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else name
            )
            where[id(child)] = inner
            visit(child, inner)

    visit(tree, "<module>")
    return where


def violations_in(path: Path) -> list[Violation]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docs = _docstrings(tree)
    function = _functions(tree)
    found: list[Violation] = []

    def add(node: ast.AST, what: str) -> None:
        name = function.get(id(node), "<module>")
        line = getattr(node, "lineno", 0)
        found.append(Violation(path.name, line, name, what))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("sqlite3", "apsw", "psycopg"):
                    add(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in ("sqlite3", "apsw", "psycopg"):
                add(node, f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "sqlite3":
                add(node, f"sqlite3.{node.attr}")
            elif node.attr in _CALLS:
                add(node, f".{node.attr}(")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docs
            and _SQL.search(node.value)
        ):
            add(node, f"SQL in a string: {node.value[:60]!r}")
    return found


def core_violations(core: Path = CORE) -> list[Violation]:
    """Every one, processing.py's too: its job-queue reads are ``JobRepository.current``."""
    return [v for path in sorted(core.glob("*.py")) for v in violations_in(path)]


def test_no_sql_in_the_core() -> None:
    found = core_violations()
    assert not found, "SQL outside storage/:\n" + "\n".join(map(str, found))


@pytest.mark.parametrize(
    "source",
    [
        "import sqlite3\n",
        'def f(db):\n    return db.execute("SELECT 1")\n',
        'Q = "SELECT id FROM chunks WHERE id = ?"\n',
        'def f(c):\n    c.run("DELETE FROM files WHERE id = ?")\n',
        'def f(c):\n    c.run("UPDATE files SET x = 1")\n',
        'def f(c):\n    c.run("INSERT INTO files (id) VALUES (?)")\n',
        'X = "SELECT seq FROM sqlite_sequence"\n',
        'X = "chunks_fts MATCH ?"\n',
        "def f(e: sqlite3.Error) -> None: ...\n",
    ],
)
def test_the_check_catches(source: str, tmp_path: Path) -> None:
    path = tmp_path / "sample.py"
    path.write_text(source)
    assert violations_in(path)


def test_the_check_passes_prose(tmp_path: Path) -> None:
    path = tmp_path / "sample.py"
    path.write_text(
        '"""Select the best chunks from the table (FTS5\'s ``bm25()``)."""\n'
        'def f() -> str:\n    """Deletes the rows from SQLite."""\n'
        '    return "select one from the list"\n'
    )
    assert violations_in(path) == []


def test_pagination_does_not_import_the_core() -> None:
    tree = ast.parse((SERVER / "storage" / "pagination.py").read_text(encoding="utf-8"))
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [m for m in imported if m.startswith("quiver.server.core")]


# -- the implementations implement the Protocols (checked by mypy, built for real here) -----


def _repositories(db: Database) -> list[object]:
    files: interfaces.FileRepository = FileRows(db)
    stores: interfaces.VectorStoreRepository = VectorStoreRows(db)
    store_files: interfaces.StoreFileRepository = StoreFileRows(db)
    batches: interfaces.BatchRepository = BatchRows(db)
    chunks: interfaces.ChunkRepository = ChunkRows(db)
    transactions: interfaces.Transactions = db
    return [files, stores, store_files, batches, chunks, transactions]


def _replaceable_parts(  # for mypy only: today's classes implement the core's ports
    pool: IngestPool,
    blobs: BlobStore,
    indexes: IndexManager,
    index: VectorIndex,
    keyword_indexes: KeywordIndexes,
    keyword_index: StoreKeywordIndex,
) -> list[object]:
    executor: ports.IngestExecutor = pool
    blob_store: ports.Blobs = blobs
    vector_indexes: ports.VectorIndexes = indexes
    vector_index: ports.VectorIndex = index
    keywords: ports.KeywordIndexes = keyword_indexes
    keyword: ports.KeywordIndex = keyword_index
    return [executor, blob_store, vector_indexes, vector_index, keywords, keyword]


def test_the_sqlite_repositories_work_on_a_database(tmp_path: Path) -> None:
    db = Database(tmp_path / "q.sqlite3")
    try:
        files, stores, _, batches, chunks, transactions = _repositories(db)
        assert isinstance(files, FileRows) and files.get("file-x", "t", "s") is None
        assert isinstance(stores, VectorStoreRows) and stores.dimensioned() == []
        assert isinstance(batches, BatchRows) and batches.status_counts("batch-x") == {}
        assert isinstance(chunks, ChunkRows) and chunks.keyword_rows([1]) == []
        assert len(chunks.completed_ids("vs-x")) == 0
        assert transactions is db
    finally:
        db.close()
