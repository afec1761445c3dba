"""The heartbeat and the sweep: every ``interval`` seconds this server renews the leases of
the files it holds, then claims the files whose lease expired (a crashed or stopped owner's)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from quiver.server.core.job_leases import JobLeases
from quiver.server.core.outages import log_failed_beat

log = logging.getLogger("quiver.leases")


class LeaseKeeper:
    def __init__(
        self,
        leases: JobLeases,
        sweep: Callable[[], Awaitable[int]],
        interval: float,
    ) -> None:
        self.leases = leases
        self.sweep = sweep
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job-lease-keeper")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.leases.renew()
            except Exception as exc:  # e.g. a full disk: tried again at the next beat
                log_failed_beat(log, "renewing the job leases", exc)
            try:
                claimed = await self.sweep()
            except Exception as exc:
                log_failed_beat(log, "claiming expired job leases", exc)
            else:
                if claimed:
                    log.info("claimed files whose lease expired", extra={"files": claimed})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
