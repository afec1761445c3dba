"""The disk-full fault: the data dir's own small tmpfs, filled with a ballast file."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tests.support import tmpfs

DISK_FULL_LEAVE = 256 * 1024  # bytes left free while the disk is "full"


class Disk:
    """The data dir's own small tmpfs, filled with a ballast file now and then."""

    def __init__(self, data_dir: Path, mounted: bool, why_not: str = "") -> None:
        self.data_dir = data_dir
        self.mounted = mounted
        self.why_not = why_not
        self.full = False  # the ballast is in place
        self.fills = 0  # episodes started
        self.free = asyncio.Event()
        self.free.set()
        self.events: list[str] = []
        self.peak_used = 0  # bytes the data dir's filesystem held, ballast not counted

    def note_usage(self) -> None:
        if self.mounted and not self.full:
            stat = os.statvfs(self.data_dir)
            used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
            self.peak_used = max(self.peak_used, used)

    def expects_refusal(self, fills_at_send: int, full_at_send: bool) -> bool:
        """Whether a DISK_FULL answer fits: the disk was full when the RPC was sent, is full
        now, or was filled while it ran."""
        return full_at_send or self.full or self.fills != fills_at_send

    async def fill_for(self, seconds: float) -> tuple[float, int]:
        """Fills the disk to ``DISK_FULL_LEAVE`` free bytes, holds it ``seconds``, frees it;
        returns (seconds it took to fill, ballast bytes)."""
        self.note_usage()
        started = time.monotonic()
        self.fills += 1
        self.full = True
        self.free.clear()
        ballast = self.data_dir / "ballast"
        try:
            await asyncio.to_thread(tmpfs.fill, self.data_dir, DISK_FULL_LEAVE)
            filled_in = time.monotonic() - started
            size = ballast.stat().st_size
            await asyncio.sleep(seconds)
        finally:
            ballast.unlink(missing_ok=True)
            self.full = False
            self.free.set()
        return filled_in, size
