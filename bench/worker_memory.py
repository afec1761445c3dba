"""Peak memory and CPU of one ingest worker on large and hostile files.

Each case runs in a fresh spawned process that does what an ingest worker does with one file
(warm up, `worker.process`, send the output back over a pipe) and reports its peak RSS
(VmHWM), CPU seconds and outcome. A case past ``--timeout`` seconds is killed and shown
as such. Cases:

- ``text``: a 60 MB (``--text-mb``) text file (prose-like words, a line every ~12 words);
- ``docx``: a ~1.6 MB DOCX whose word/document.xml is 60 MB (``--docx-xml-mb``; ~37:1,
  under the zip-bomb ratio);
- ``html``: hostile HTML, ``<a`` repeated (``--html-kb`` KB), quadratic in CPython's
  ``html.parser``;
- ``pdfpages``: a PDF whose page tree lists one page 100,000 times.

Runs against whatever ``quiver.server`` is first on the path, so the same script measures an
older checkout too::

    .venv/bin/python -m bench.worker_memory
    PYTHONPATH=/tmp/quiver-old/server .venv/bin/python -m bench.worker_memory --timeout 60

``--worker-memory MiB`` runs the cases under that limit (RLIMIT_AS and the derived caps), when
the code has limits (``quiver.server.ingest.limits``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import multiprocessing
import os
import resource
import tempfile
import time
import zipfile
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.docgen import make_pdf_repeating_page

MB = 1_000_000
RSID_EVERY = 7


def prose_bytes(size: int, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocab = ["".join(rng.choice(letters, size=int(n))) for n in rng.integers(2, 11, 4000)]
    words = np.array(vocab)[rng.integers(0, len(vocab), size // 5)]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return ("\n".join(lines) + "\n").encode()[:size]


def docx_bytes(xml_size: int) -> bytes:
    """A python-docx document whose word/document.xml is replaced by ~xml_size bytes of
    paragraphs (the rest of the package is python-docx's own)."""
    import docx

    buffer = io.BytesIO()
    docx.Document().save(buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    # A few hundred distinct lines, repeated: compresses about as well as real Word XML
    # with long repeated runs does (37:1 here).
    text = prose_bytes(12_000, seed=11).decode().split("\n")[:-1]
    head = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        "<w:body>"
    )
    parts = [head]
    size = len(head)
    rsids = np.random.default_rng(3).integers(0, 1 << 32, xml_size // 64)
    i = 0
    while size < xml_size:
        # Word's revision ids (random hex every few paragraphs) keep it from compressing
        # more than real documents do.
        rsid = f' w:rsidR="{rsids[i]:08X}"' if i % RSID_EVERY == 0 else ""
        p = f"<w:p{rsid}><w:r><w:rPr><w:b/></w:rPr><w:t>{text[i % len(text)]}</w:t></w:r></w:p>"
        parts.append(p)
        size += len(p)
        i += 1
    parts.append("<w:sectPr/></w:body></w:document>")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "word/document.xml":
                data = "".join(parts).encode()
            target.writestr(item.filename, data)
    return out.getvalue()


def hostile_html(kb: int) -> bytes:
    return b"<html><body>" + b"<a" * (kb * 1000 // 2)


# -- the worker side -------------------------------------------------------------------------


def _hwm_mib() -> float:
    """Peak RSS of this process (VmHWM; unlike ru_maxrss it does not count the memory of the
    parent that forked it before the exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(conn: Connection, source: Any, filename: str, memory_mib: int) -> None:
    from quiver.server.embedders.registry import EmbedderSpec
    from quiver.server.ingest import worker

    worker.warm_up()
    job = worker.WorkerInput(source, filename, 800, 400, EmbedderSpec("hash", 512))
    args: list[Any] = [job]
    if memory_mib:
        from quiver.server.ingest.limits import WorkerLimits  # newer code only

        limit = memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        args.append(WorkerLimits(memory_bytes=limit))
    base_rss = _hwm_mib()
    started, cpu = time.perf_counter(), _cpu()
    output = worker.process(*args)
    try:  # what the pool does with the output: newer code streams it, older pickled it whole
        from quiver.server.ingest.transport import send_output

        conn.send(("output",))
        send_output(conn, output)
    except ImportError:
        conn.send(("output",))
        conn.send(output)
    peak = _hwm_mib()
    summary = output.error[1] if output.error else f"{len(output.texts):,} chunks"
    conn.send(
        (
            "done",
            {
                "base_rss_mib": base_rss,
                "peak_rss_mib": peak,
                "cpu_s": _cpu() - cpu,
                "wall_s": time.perf_counter() - started,
                "outcome": summary,
            },
        )
    )


def _so_far(pid: int) -> dict[str, Any]:
    """Peak RSS and CPU of a worker that is still running (read before it is killed)."""
    found: dict[str, Any] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    found["peak_rss_mib_so_far"] = int(line.split()[1]) / 1024
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        found["cpu_s_so_far"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return found


def _source(path: Path) -> Any:
    """What the worker reads: a blob address (newer code), or the file's path (older code)."""
    from quiver.server.ingest import worker

    if "blob" not in {f.name for f in dataclasses.fields(worker.WorkerInput)}:
        return str(path)
    from tests.support.blob_refs import blob_of

    return blob_of(path)


def measure(path: Path, filename: str, timeout: float, memory_mib: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=_child, args=(theirs, _source(path), filename, memory_mib))
    started = time.monotonic()
    process.start()
    theirs.close()
    try:
        while True:
            left = timeout - (time.monotonic() - started)
            if left <= 0 or not ours.poll(left):
                return {
                    **_so_far(process.pid or 0),
                    "outcome": f"still running after {timeout:g} s: killed",
                }
            message = ours.recv()
            if message[0] == "output":
                try:  # drain the output (newer code: several messages)
                    from quiver.server.ingest.transport import recv_output

                    recv_output(ours)
                except ImportError:
                    ours.recv()
            elif message[0] == "done":
                result: dict[str, Any] = message[1]
                return result
    except EOFError:
        process.join(5)
        return {"outcome": f"worker died (exit code {process.exitcode})"}
    finally:
        process.kill()
        process.join(5)


CASES: dict[str, tuple[str, Callable[[argparse.Namespace], bytes]]] = {
    "text": ("big.txt", lambda a: prose_bytes(a.text_mb * MB)),
    "docx": ("big.docx", lambda a: docx_bytes(a.docx_xml_mb * MB)),
    "html": ("hostile.html", lambda a: hostile_html(a.html_kb)),
    "pdfpages": ("pages.pdf", lambda a: make_pdf_repeating_page(100_000)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma separated")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--text-mb", type=int, default=60)
    parser.add_argument("--docx-xml-mb", type=int, default=60)
    parser.add_argument("--html-kb", type=int, default=400)
    parser.add_argument("--worker-memory", type=int, default=0, help="MiB (newer code only)")
    args = parser.parse_args()
    import quiver.server

    print(f"code: {os.path.dirname(quiver.server.__file__)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            filename, make = CASES[name]
            path = Path(tmp) / filename
            data = make(args)
            path.write_bytes(data)
            extra = ""
            if name == "docx":
                xml = zipfile.ZipFile(io.BytesIO(data)).getinfo("word/document.xml").file_size
                extra = f", {xml / MB:.1f} MB of XML"
            print(f"{name}: {len(data) / MB:.2f} MB file{extra}", flush=True)
            result = measure(path, filename, args.timeout, args.worker_memory)
            for key, value in result.items():
                shown = f"{value:,.1f}" if isinstance(value, float) else value
                print(f"    {key}: {shown}", flush=True)


if __name__ == "__main__":
    main()
