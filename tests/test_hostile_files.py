"""Hostile and oversized files: linear HTML parsing, PDF page-tree caps, the worker memory
limit (size caps that follow from it, and a guard for what slips under them)."""

from __future__ import annotations

import multiprocessing
import resource
import subprocess
import sys
import time
from dataclasses import replace
from html.parser import HTMLParser
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from quiver.server.config import Settings
from quiver.server.core.error_codes import ErrorCode
from quiver.server.embedders.registry import EmbedderSpec
from quiver.server.ingest import limits as limits_module
from quiver.server.ingest import worker
from quiver.server.ingest.limits import MiB, WorkerLimits, vm_size_bytes
from quiver.server.ingest.parsing import FileProcessingError, parse_document
from quiver.server.storage.blob_location import BlobRef

from tests.support.batch_helpers import (
    F_COMPLETED,
    F_FAILED,
    create_batch,
    create_store,
    final_statuses,
    prose,
    upload_all,
    watch_to_end,
)
from tests.support.blob_refs import blob_of
from tests.support.docgen import make_docx_with_xml, make_pdf, make_pdf_repeating_page
from tests.support.inproc import Running


def _error(data: bytes, filename: str) -> FileProcessingError:
    with pytest.raises(FileProcessingError) as caught:
        parse_document(data, filename)
    return caught.value


# -- HTML ----------------------------------------------------------------------------------


def hostile_html(n_bytes: int) -> bytes:
    """Runs of unclosed ``<a``: CPython's html.parser rescans the rest of the buffer at each."""
    return b"<html><body><p>visible words</p>" + b"<a" * (n_bytes // 2)


def _stdlib_seconds(data: bytes) -> float:
    parser = HTMLParser()
    started = time.process_time()
    parser.feed(data.decode())
    parser.close()
    return time.process_time() - started


def test_hostile_html_parses_in_linear_time() -> None:
    data = hostile_html(400_000)
    started = time.process_time()
    text = parse_document(data, "hostile.html")
    seconds = time.process_time() - started
    assert text.startswith("visible words")
    # What the old parser (CPython's html.parser) takes, on inputs 10 and 20 times smaller:
    # quadratic, so 400 KB would take ~100-400 times the 40 KB figure.
    small = _stdlib_seconds(hostile_html(20_000))
    double = _stdlib_seconds(hostile_html(40_000))
    print(
        f"400 KB of '<a': {seconds:.3f} s CPU; html.parser: 20 KB {small:.2f} s, "
        f"40 KB {double:.2f} s"
    )
    assert seconds < 5  # html.parser: minutes


def test_html_nested_past_the_parser_limit_fails_instead_of_losing_text() -> None:
    depth = 5000
    data = b"<html><body>" + b"<div>" * depth + b"deep" + b"</div>" * depth + b"<p>after</p>"
    error = _error(data, "deep.html")
    assert error.code == ErrorCode.INVALID_FILE
    assert "depth" in error.message.lower()


def test_html_keeps_text_at_ordinary_depth() -> None:
    data = b"<html><body>" + b"<div>" * 300 + b"deep" + b"</div>" * 300 + b"<p>after</p>"
    assert parse_document(data, "nested.html") == "deep\n\nafter"


# -- PDF -----------------------------------------------------------------------------------


def test_pdf_listing_one_page_100000_times_fails_fast_naming_the_cap() -> None:
    data = make_pdf_repeating_page(100_000)
    started = time.process_time()
    error = _error(data, "pages.pdf")
    seconds = time.process_time() - started
    print(f"100,000-page tree: {seconds:.2f} s CPU")
    assert error.code == ErrorCode.INVALID_FILE
    assert f"{limits_module.MAX_PDF_PAGES:,}" in error.message
    assert seconds < 10  # pypdf extracting every listed page: over a minute


def test_pdf_listing_a_page_twice_fails() -> None:
    error = _error(make_pdf_repeating_page(3), "twice.pdf")
    assert error.code == ErrorCode.INVALID_FILE
    assert "more than once" in error.message


def test_pdf_with_many_distinct_pages_still_parses() -> None:
    lines = [f"line {i}" for i in range(200)]
    text = parse_document(make_pdf(lines, lines_per_page=2), "long.pdf")
    assert "line 0" in text and "line 199" in text


# -- memory: caps that follow from the limit ---------------------------------------------


def test_size_caps_follow_from_the_memory_limit() -> None:
    small, large = WorkerLimits(memory_bytes=600 * MiB), WorkerLimits(memory_bytes=4096 * MiB)
    assert small.max_text_chars < large.max_text_chars <= limits_module.MAX_TEXT_CHARS
    assert small.max_docx_xml_bytes < large.max_docx_xml_bytes
    assert small.max_pdf_bytes < large.max_pdf_bytes
    data = b"word " * (small.max_text_chars // 5 + 1)
    with pytest.raises(FileProcessingError) as caught:
        parse_document(data, "big.txt", small)
    assert caught.value.code == ErrorCode.INVALID_FILE
    assert "600 MiB (--worker-memory)" in caught.value.message
    assert parse_document(data, "big.txt", large)
    # The cap counts characters, not bytes: 3-byte characters under it in number pass.
    wide = "漢字 " * (small.max_text_chars // 3 - 10)
    assert len(wide.encode()) > small.max_text_chars
    assert len(parse_document(wide.encode(), "wide.txt", small)) == len(wide)


def _process_under_limit(conn: Connection, blob: BlobRef, headroom: int) -> None:
    """In a spawned process: cap the address space at what is mapped now plus ``headroom``,
    lift the text cap (as if the estimate were wrong) and process a file."""
    worker.warm_up()
    limit = vm_size_bytes() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    limits_module.TEXT_BYTES_PER_CHAR = 1
    job = worker.WorkerInput(blob, "big.txt", 800, 400, EmbedderSpec("hash", 64))
    output = worker.process(job, WorkerLimits(memory_bytes=limit))
    conn.send((output.error, len(output.texts)))


def test_a_file_that_slips_under_the_caps_fails_alone_at_the_limit(tmp_path: Path) -> None:
    """The caps are estimates; the worker's guard fails a file that needs more anyway (as
    invalid_file naming the limit) before native code would abort the worker."""
    path = tmp_path / "big.txt"
    path.write_text(prose(5, 1_000_000) * 30)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=_process_under_limit, args=(theirs, blob_of(path), 160 * MiB))
    process.start()
    theirs.close()
    try:
        assert ours.poll(240), "the worker did not answer"
        error, n_chunks = ours.recv()
    finally:
        process.join(30)
        process.kill()
    assert process.exitcode == 0
    assert error is not None and error[0] == ErrorCode.INVALID_FILE, error
    assert "(--worker-memory)" in error[1] and "MiB" in error[1]
    assert n_chunks == 0


def _parse_docx_under_limit(conn: Connection, path: str, headroom: int) -> None:
    worker.warm_up()
    limit = vm_size_bytes() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    data = Path(path).read_bytes()
    try:
        text = parse_document(data, "big.docx", WorkerLimits(memory_bytes=1 << 40))
    except (FileProcessingError, MemoryError) as exc:
        conn.send(repr(exc))
        return
    conn.send(text.count("\n") + 1)


def test_a_docx_with_much_xml_is_read_as_a_stream(tmp_path: Path) -> None:
    """20 MB of XML within 120 MiB (through python-docx's tree it needed ~170 MiB and 6 times
    the CPU)."""
    path = tmp_path / "big.docx"
    path.write_bytes(make_docx_with_xml(20_000_000))
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=_parse_docx_under_limit, args=(theirs, str(path), 120 * MiB))
    process.start()
    theirs.close()
    try:
        assert ours.poll(240), "the worker did not answer"
        answer = ours.recv()
    finally:
        process.join(30)
        process.kill()
    assert isinstance(answer, int), answer
    assert answer > 200_000  # one line per paragraph


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, worker_memory=600)


async def test_an_over_memory_file_fails_alone_naming_the_limit(running: Running) -> None:
    a = running.alice
    store = await create_store(a)
    cap = WorkerLimits(memory_bytes=600 * MiB).max_text_chars
    big = ("word " * (cap // 5 + 1_000)).encode()
    docs: list[tuple[str, bytes]] = [("big.txt", big)]
    docs += [(f"small{i}.txt", prose(i, 2_000).encode()) for i in range(3)]
    ids = await upload_all(a, docs)
    batch = await create_batch(a, store.id, ids)
    updates = final_statuses(await watch_to_end(a, store.id, batch.id, within=120))
    assert updates[ids[0]].status == F_FAILED
    assert updates[ids[0]].last_error.code == "invalid_file"
    assert "600 MiB (--worker-memory)" in updates[ids[0]].last_error.message
    for file_id in ids[1:]:
        assert updates[file_id].status == F_COMPLETED
    assert running.server.core.pool.restarts == 0


def test_worker_memory_setting() -> None:
    with pytest.raises(ValueError, match="--worker-memory 100 MiB is too small"):
        limits_module.worker_memory_bytes(100, 2)
    auto = limits_module.worker_memory_bytes(0, 2)
    assert limits_module.MIN_WORKER_MEMORY <= auto <= limits_module.MAX_DEFAULT_WORKER_MEMORY
    ram = limits_module.physical_memory()
    if ram:
        assert auto * 2 <= max(ram // 2, 2 * limits_module.MIN_WORKER_MEMORY)
    assert limits_module.worker_memory_bytes(700, 2) == 700 * MiB


def test_serve_refuses_a_worker_memory_below_the_floor(tmp_path: Path) -> None:
    args = ["serve", "--worker-memory", "100", "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(
        [sys.executable, "-m", "quiver.client.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "--worker-memory 100 MiB is too small" in done.stderr
    assert "Traceback" not in done.stderr
