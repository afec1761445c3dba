"""This replica's membership: it heartbeats its row in the database every ``heartbeat``
seconds and reads the live set (heartbeats within ``window`` seconds) off the event loop;
``core/ownership.py`` turns that set into the owner of each store.

On one node (the embedded SQLite default) the live set is this replica alone, which owns
every store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from quiver.server.core.clock import Clock, system_clock
from quiver.server.core.outages import log_failed_beat
from quiver.server.core.ownership import Ownership, Replica, View
from quiver.server.storage.interfaces import ReplicaRepository

log = logging.getLogger("quiver.replicas")

MAX_REPLICA_ID = 200
FORGET_AFTER_S = 24 * 3600.0
"""Rows of replicas silent this long are deleted (at a heartbeat)."""


def check_replica_settings(heartbeat_s: float, window_s: float, forward_timeout_s: float) -> None:
    """ValueError naming the flag unless the heartbeat, live window and forward timeout can
    work together."""
    problems = []
    if not 0 < heartbeat_s <= 3600:
        problems.append(f"--replica-heartbeat-seconds must be in (0, 3600], not {heartbeat_s}")
    elif not 2 * heartbeat_s <= window_s <= 86400:
        problems.append(
            f"--replica-timeout-seconds must be at least twice --replica-heartbeat-seconds "
            f"({2 * heartbeat_s:g}) and at most 86400, not {window_s}"
        )
    if not 0 < forward_timeout_s <= 3600:
        problems.append(
            f"--replica-forward-timeout-seconds must be in (0, 3600], not {forward_timeout_s}"
        )
    if problems:
        raise ValueError("; ".join(problems))


def check_advertise(value: str) -> str | None:
    """What is wrong with an ``--advertise`` value ('' or host:port), or None."""
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"--advertise must be HOST:PORT (port 1…65535), not {value[:80]!r}"
    if host.strip("[]") in ("0.0.0.0", "::"):
        return f"--advertise must be an address other replicas can dial, not {value[:80]!r}"
    return None


@dataclass(frozen=True)
class Route:
    """Where a store's search is answered: here (``owner`` is this replica) or forwarded."""

    epoch: int
    owner: Replica
    local: bool


class Replicas:
    def __init__(
        self,
        rows: ReplicaRepository,
        replica_id: str,
        *,
        heartbeat_s: float,
        window_s: float,
        clock: Clock = system_clock,
    ) -> None:
        self.rows = rows
        self.replica_id = replica_id[:MAX_REPLICA_ID]
        self.heartbeat_s = heartbeat_s
        self.window_s = window_s
        self.clock = clock
        self._ownership: Ownership | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def joined(self) -> bool:
        return self._ownership is not None

    @property
    def view(self) -> View:
        """The current view (before ``join``: this replica alone, address unknown)."""
        if self._ownership is None:
            me = Replica(self.replica_id, "")
            return View(0, me, (me,))
        return self._ownership.view

    @property
    def epoch(self) -> int:
        return self.view.epoch

    async def join(self, address: str) -> None:
        """Heartbeats once as reachable at ``address`` and reads the live set."""
        self._ownership = Ownership(Replica(self.replica_id, address))
        await asyncio.to_thread(self.rows.beat, self.replica_id, address, self.clock())
        await self.refresh()

    async def refresh(self) -> View:
        """Reads the live set from the database (on a thread) into the view."""
        if self._ownership is None:
            return self.view
        since = self.clock() - self.window_s
        rows = await asyncio.to_thread(self.rows.live, since)
        before = self._ownership.view
        after = self._ownership.observe(rows)
        if after.epoch != before.epoch:
            log.info(
                "live replicas changed",
                extra={"epoch": after.epoch, "replicas": [r.replica_id for r in after.replicas]},
            )
        return after

    def route(self, store_id: str) -> Route:
        view = self.view
        owner = view.owner(store_id)
        return Route(view.epoch, owner, owner.replica_id == self.replica_id)

    def mark_dead(self, replica_id: str) -> View:
        """``replica_id`` did not answer a forwarded call: its stores move (at a new epoch)
        until it heartbeats again."""
        if self._ownership is None:
            return self.view
        view = self._ownership.mark_dead(replica_id)
        log.warning(
            "replica unreachable: its stores are served by the others until it heartbeats again",
            extra={"replica": replica_id, "epoch": view.epoch},
        )
        return view

    def start(self) -> None:
        """The heartbeat: beat, then read the live set, every ``heartbeat_s`` seconds."""
        if self._ownership is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="replica-heartbeat")

    async def _run(self) -> None:
        assert self._ownership is not None
        address = self._ownership.view.me.address
        beats = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await asyncio.to_thread(self.rows.beat, self.replica_id, address, self.clock())
                await self.refresh()
                beats += 1
                if beats % 1000 == 1:
                    await asyncio.to_thread(self.rows.forget_before, self.clock() - FORGET_AFTER_S)
            except Exception as exc:  # e.g. the database restarting: tried again at the next beat
                log_failed_beat(log, "replica heartbeat", exc)

    async def stop(self) -> None:
        """Stops the heartbeat and removes this replica's row (the others stop forwarding to
        it at their next refresh instead of after the window)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ownership is not None:
            try:
                await asyncio.to_thread(self.rows.leave, self.replica_id)
            except Exception:
                log.exception("removing this replica's heartbeat row failed")
