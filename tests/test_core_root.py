"""The core as ``build_core`` makes it, driven with no gRPC at all: the composition root is
all an edge (the gRPC server, an HTTP edge, a tool) needs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from quiver.server.config import Settings
from quiver.server.core.errors import InvalidArgument
from quiver.server.core.models import AUTO_CHUNKING, FileStatus
from quiver.server.core.principal import Principal
from quiver.server.core.root import Core, build_core
from quiver.server.core.search import check_search

ALICE = Principal("alice")
TEXT = (
    "Quivers hold arrows. The archer's quiver was made of birch bark and leather.\n\n"
    "Sourdough bread needs a starter, flour, water and salt."
)


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    core = build_core(Settings(data_dir=tmp_path / "data", ingest_workers=1))
    try:
        await core.start_workers()
        assert await core.recover() == 0
        core.start_processing()
        yield core
    finally:
        await core.stop_processing()
        core.close()


async def _completed(core: Core, store_id: str, file_id: str, within: float = 60) -> FileStatus:
    deadline = time.monotonic() + within
    while True:
        status = (await core.store_files.get(ALICE, store_id, file_id)).status
        if status is not FileStatus.IN_PROGRESS or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


async def _upload(core: Core, name: str, data: bytes) -> str:
    upload = core.files.begin_upload(ALICE, name, "assistants", "")
    await asyncio.to_thread(upload.write, data)
    return (await upload.finish()).id


async def test_create_upload_attach_search_delete_without_grpc(core: Core) -> None:
    store = await core.stores.create(
        ALICE,
        name="notes",
        metadata={},
        expires_after=None,
        embedding_model="",
        embedding_dimensions=0,
    )
    file_id = await _upload(core, "notes.txt", TEXT.encode())
    attached = await core.store_files.create(
        ALICE, store.id, file_id, {"kind": "notes"}, AUTO_CHUNKING
    )
    assert attached.status is FileStatus.IN_PROGRESS
    assert await _completed(core, store.id, file_id) is FileStatus.COMPLETED

    request = check_search(["birch bark quiver"], 5, None, "", 0.0)
    hits = await core.searcher.search(ALICE, store.id, request)
    assert [h.file_id for h in hits] == [file_id]
    assert "birch bark" in hits[0].text
    assert hits[0].attributes == {"kind": "notes"}

    # DeleteFile detaches it from the store in the same transaction.
    await core.file_deletion.delete(ALICE, file_id)
    assert (await core.stores.get(ALICE, store.id)).file_counts.total == 0
    assert await core.searcher.search(ALICE, store.id, request) == []


@pytest.mark.parametrize("model", ["openai: ", "openai:", "openai: x", "OpenAI:x", "hash:", "x"])
def test_a_degenerate_model_name_is_refused_naming_embedding_model(
    tmp_path: Path, model: str
) -> None:
    """The one grammar (embedders/model_names.py) refuses it at create, with or without an
    endpoint configured; nothing is written (tests/test_openai_dimensions.py checks the
    same through gRPC)."""
    for i, base_url in enumerate(("", "http://127.0.0.1:9/v1")):
        settings = Settings(data_dir=tmp_path / str(i), openai_base_url=base_url)
        core = build_core(settings)  # not started: creating a store needs no worker
        try:
            with pytest.raises(InvalidArgument) as caught:
                asyncio.run(
                    core.stores.create(
                        ALICE,
                        name="",
                        metadata={},
                        expires_after=None,
                        embedding_model=model,
                        embedding_dimensions=0,
                    )
                )
            assert [v.field for v in caught.value.violations] == ["embedding_model"]
            assert core.db.execute("SELECT COUNT(*) FROM vector_stores").fetchone()[0] == 0
        finally:
            core.close()


def test_the_core_imports_no_rpc_or_http_framework() -> None:
    """Importing the composition root loads neither gRPC nor protobuf (the edges' business)."""
    code = (
        "import sys, quiver.server.core.root\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'google', 'grpc_health', 'grpc_reflection') or m.startswith('quiver.v1'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
