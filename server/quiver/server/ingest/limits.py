"""What one ingest worker may use: memory (address space) and CPU per file, and the size caps
of the parsers that follow from the memory limit.

The memory limit is the worker's whole address space (RLIMIT_AS), so it includes what an
idle worker already maps (Python, numpy, the tokenizer: about 220 MiB). The caps are set so
that a file under them fits in what is left: the peak of a text file is about
`TEXT_BYTES_PER_CHAR` bytes per character of text (the text, its overlapping chunks, their
vectors), and reading a DOCX's XML as a stream holds at most about
`DOCX_BYTES_PER_XML_BYTE` bytes per byte of XML (its text and the parser's buffers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MiB = 1024 * 1024
GiB = 1024 * MiB

MIN_WORKER_MEMORY = 512 * MiB
"""Below this a warmed-up worker (about 220 MiB mapped) has too little left to be useful."""
MAX_DEFAULT_WORKER_MEMORY = 4 * GiB
IDLE_WORKER_BYTES = 256 * MiB
"""Address space a worker maps before it reads a file (measured: ~220 MiB), rounded up."""

TEXT_BYTES_PER_CHAR = 24
DOCX_BYTES_PER_XML_BYTE = 4
PDF_BYTES_PER_FILE_BYTE = 16

MAX_TEXT_CHARS = 64_000_000
"""Never more than this per file, however much memory: the server holds a file's chunks too."""
MAX_DOCX_XML_BYTES = 200 * MiB
MAX_PDF_PAGES = 5_000
MAX_PDF_OBJECTS = 1_000_000


GUARD_MARGIN = 96 * MiB
"""The worker fails a file itself (MemoryError) once its address space comes this close to
the limit: native code (tiktoken) aborts the whole process when an allocation fails."""


def vm_size_bytes(pid: int | str = "self") -> int:
    """A process's mapped address space (VmSize), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def default_worker_memory(workers: int) -> int:
    """min(4 GiB, half of physical memory / workers), and at least the minimum."""
    ram = physical_memory()
    share = ram // 2 // max(1, workers) if ram else MAX_DEFAULT_WORKER_MEMORY
    return max(MIN_WORKER_MEMORY, min(MAX_DEFAULT_WORKER_MEMORY, share))


def worker_memory_bytes(setting_mib: int, workers: int) -> int:
    """The --worker-memory setting (MiB; 0 = automatic) in bytes; ValueError if too small."""
    if setting_mib < 0:
        raise ValueError(
            f"--worker-memory must be 0 (automatic) or a size in MiB, not {setting_mib}"
        )
    if setting_mib == 0:
        return default_worker_memory(workers)
    if setting_mib * MiB < MIN_WORKER_MEMORY:
        raise ValueError(
            f"--worker-memory {setting_mib} MiB is too small: a worker needs at least "
            f"{MIN_WORKER_MEMORY // MiB} MiB"
        )
    return setting_mib * MiB


@dataclass(frozen=True)
class WorkerLimits:
    """Picklable; sent to each worker when it starts."""

    memory_bytes: int = MAX_DEFAULT_WORKER_MEMORY
    parse_seconds: float = 60.0

    @property
    def memory_mib(self) -> int:
        return self.memory_bytes // MiB

    @property
    def usable_bytes(self) -> int:
        return max(0, self.memory_bytes - IDLE_WORKER_BYTES)

    @property
    def max_text_chars(self) -> int:
        return min(MAX_TEXT_CHARS, self.usable_bytes // TEXT_BYTES_PER_CHAR)

    @property
    def max_docx_xml_bytes(self) -> int:
        return min(MAX_DOCX_XML_BYTES, self.usable_bytes // DOCX_BYTES_PER_XML_BYTE)

    @property
    def max_pdf_bytes(self) -> int:
        return self.usable_bytes // PDF_BYTES_PER_FILE_BYTE

    def check_memory(self) -> None:
        """Raises MemoryError when this process is within GUARD_MARGIN of the limit."""
        if vm_size_bytes() > self.memory_bytes - GUARD_MARGIN:
            raise MemoryError

    def memory_hint(self) -> str:
        return f"the worker memory limit of {self.memory_mib:,} MiB (--worker-memory)"


UNLIMITED = WorkerLimits(memory_bytes=1 << 62, parse_seconds=float("inf"))
"""For parsing outside a worker (tests, tools): only the absolute caps apply."""
