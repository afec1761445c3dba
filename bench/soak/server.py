"""The crash loop's server: ``quiver serve`` started, SIGKILLed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from bench.soak.disk import Disk
from bench.soak.options import Options
from bench.soak.process_group import Member, group_members, kill_members, same_process
from tests.support.serve import free_port, is_serving_async, serve_command


class ServerLoop:
    """``quiver serve`` on one port and data dir, started, SIGKILLed and restarted."""

    def __init__(self, options: Options, run_dir: Path, disk: Disk) -> None:
        self.options = options
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.data_dir = disk.data_dir
        self.disk = disk
        self.log_path = run_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.starts = 0
        self.epoch = 0  # bumped just before every kill
        self.up = asyncio.Event()
        self.serving_times: list[float] = []
        self.per_start: list[str] = []  # seconds to SERVING, or "killed", by start
        self.kills: list[str] = []  # one line per kill
        self._left_behind: list[dict[int, Member]] = []  # what each kill left alive
        self.orphans: list[str] = []
        self._all: list[subprocess.Popen[bytes]] = []
        self._log: IO[bytes] | None = None
        self._reapers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log.write(f"--- soak: start #{self.starts} ---\n".encode())
        self._log.flush()
        command = serve_command(self.target, self.data_dir)
        command += ["--ingest-workers", str(self.options.ingest_workers)]
        command += ["--log-level", self.options.log_level]
        command += ["--index-save-interval", str(self.options.index_save_interval)]
        # A killed server's files are taken up once their job leases expire: keep them short.
        command += ["--job-lease-seconds", "2", "--job-renew-seconds", "0.5"]
        self.started = time.monotonic()
        # Its own session: the ingest workers share its process group, so whatever of it
        # survives a kill can be found (and reaped) by that group id.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        self._all.append(self.process)

    async def wait_serving(self, timeout: float) -> float:
        """Waits until health says SERVING; returns the seconds since ``start``."""
        process = self.process
        assert process is not None
        if self.up.is_set():
            return 0.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"quiver serve exited with {process.returncode} while starting; "
                    f"see {self.log_path}"
                )
            if await is_serving_async(self.target):
                seconds = time.monotonic() - self.started
                self.serving_times.append(seconds)
                self.per_start.append(f"{seconds:.2f}")
                self.up.set()
                return seconds
            await asyncio.sleep(0.05)
        raise TimeoutError(f"quiver serve on {self.target} was not SERVING after {timeout:g} s")

    async def kill(self, why: str, in_flight: int, open_batches: int) -> None:
        process = self.process
        assert process is not None
        self.epoch += 1
        if not self.up.is_set():
            self.per_start.append("killed")
        self.up.clear()
        age = time.monotonic() - self.started
        group = group_members(process.pid)  # while the leader lives the group is surely ours
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait, 30)
        group.update(group_members(process.pid))  # workers it spawned meanwhile
        group.pop(process.pid, None)
        self.kills.append(
            f"kill {len(self.kills) + 1}: {why}, {age:.2f} s after start, "
            f"{in_flight} RPCs in flight, {open_batches} batches unfinished"
        )
        self._left_behind.append(group)
        self._reapers.append(asyncio.create_task(self._reap(group, len(self.kills))))

    async def _reap(self, group: dict[int, Member], kill: int) -> None:
        """Records processes of a killed server that outlive it (its ingest workers), then
        kills them: they would otherwise pile up over the soak."""
        await asyncio.sleep(3.0)
        alive = [f"{pid} ({m.name})" for pid, m in group.items() if same_process(pid, m)]
        if alive:
            self.orphans.append(
                f"kill {kill}: {len(alive)} process(es) of the killed server still alive 3 s "
                f"later: {', '.join(alive)}"
            )
        kill_members(group)

    async def wait_reapers(self) -> None:
        if self._reapers:
            await asyncio.wait(self._reapers, timeout=10)

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM; the exit code, or None when it had to be killed after ``timeout``."""
        process = self.process
        assert process is not None
        self.epoch += 1  # a new server life: clients open new channels
        self.up.clear()
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(process.wait, timeout)
        except subprocess.TimeoutExpired:
            self._kill_now(process)
            return None

    def _kill_now(self, process: subprocess.Popen[bytes]) -> None:
        group = group_members(process.pid)
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        kill_members(group)

    def kill_everything(self) -> None:
        """Every process this soak started and what was left of them, by pid (each checked
        by its start time, so a reused pid is never hit)."""
        for process in self._all:
            if process.poll() is None:
                self._kill_now(process)
        for task in self._reapers:
            task.cancel()
        for group in self._left_behind:
            kill_members(group)
        if self._log is not None:
            self._log.close()
            self._log = None
