"""Several ``quiver serve`` replicas on one machine, for ``make cluster-test``: each its own
process group on its own port and data directory (its indexes are caches), all against one
database (``--database URL``, PostgreSQL) and whatever shared blob store ``extra`` names.
A replica can be SIGKILLed (with its workers) and restarted on the same port and directory.

    cluster = Cluster(tmp_path, 3, database=pg.url, extra=("--blobs", str(shared)))
    await cluster.start()
    ...
    cluster.kill(1)
    await cluster.restart(1)
    ...
    await cluster.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO

from grpc import aio
from quiver.server.config import Settings

from tests.support.serve import clean_env, free_port, is_serving_async, serve_command

HEARTBEAT_SECONDS = "0.5"
REPLICA_TIMEOUT_SECONDS = "3"
"""Short, so a killed replica's stores move within seconds."""


@dataclass
class ClusterReplica:
    """One replica: its port and data directory stay the same across restarts."""

    index: int
    port: int
    data_dir: Path
    log_path: Path
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None
    channel: aio.Channel | None = None
    starts: int = 0
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        self._log = self.log_path.open("ab")
        self._log.write(f"---- start {self.starts + 1}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=clean_env(),
        )
        self.starts += 1
        self.channel = aio.insecure_channel(self.target)

    def log(self) -> str:
        """Its output so far ("" before its first start)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the process group (the server and its ingest workers)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a clean stop), SIGKILL after ``timeout``; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    async def close_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None


def shared_blobs(root: Path) -> list[str]:
    """``--blobs DIR`` (a directory every replica shares) when this build has that setting."""
    if "blobs" not in {f.name for f in fields(Settings)}:
        return []
    path = root / "blobs"
    path.mkdir(parents=True, exist_ok=True)
    return ["--blobs", str(path)]


class Cluster:
    """``size`` replicas of ``quiver serve`` against ``database`` (a URL; None: each its own
    SQLite database in its data directory, which shares nothing: only for trying the
    harness itself)."""

    def __init__(
        self,
        root: Path,
        size: int,
        *,
        database: str | None,
        extra: Sequence[str] = (),
        ingest_workers: int = 1,
    ) -> None:
        self.root = root
        self.replicas: list[ClusterReplica] = []
        for i in range(size):
            port = free_port()
            data = root / f"replica-{i}"
            data.mkdir(parents=True, exist_ok=True)
            args = [
                "--http-listen",
                "off",
                "--ingest-workers",
                str(ingest_workers),
                "--replica-heartbeat-seconds",
                HEARTBEAT_SECONDS,
                "--replica-timeout-seconds",
                REPLICA_TIMEOUT_SECONDS,
                # A SIGKILLed replica's files are taken up once their leases expire: short.
                "--job-lease-seconds",
                "2",
                "--job-renew-seconds",
                "0.5",
            ]
            if database is not None:
                args += ["--database", database]
            command = serve_command(f"127.0.0.1:{port}", data, *args, *extra)
            self.replicas.append(ClusterReplica(i, port, data, root / f"replica-{i}.log", command))

    def __getitem__(self, i: int) -> ClusterReplica:
        return self.replicas[i]

    def __len__(self) -> int:
        return len(self.replicas)

    async def start(self, within: float = 60.0) -> None:
        """Starts every replica and waits until each answers SERVING."""
        for replica in self.replicas:
            replica.launch()
        await asyncio.gather(*(self._wait(r, within) for r in self.replicas))

    async def _wait(self, replica: ClusterReplica, within: float) -> None:
        """Until the replica answers SERVING; fails if it exits or takes over ``within`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not await is_serving_async(replica.target):
            assert replica.running, f"replica {replica.index} exited:\n{replica.log()}"
            assert loop.time() < deadline, (
                f"replica {replica.index} not SERVING within {within} s:\n{replica.log()}"
            )
            await asyncio.sleep(0.1)

    def kill(self, i: int) -> None:
        self.replicas[i].kill()

    async def restart(self, i: int, within: float = 60.0) -> None:
        """Starts replica ``i`` again (same port, same data directory) after a kill or stop."""
        replica = self.replicas[i]
        assert not replica.running, f"replica {i} is still running"
        await replica.close_channel()
        replica.launch()
        await self._wait(replica, within)

    def live(self) -> list[ClusterReplica]:
        return [r for r in self.replicas if r.running]

    def logs(self) -> str:
        return "\n".join(f"==== replica {r.index}\n{r.log()}" for r in self.replicas)

    async def close(self) -> None:
        """Stops every replica (SIGTERM, then SIGKILL) and closes the channels."""
        for replica in self.replicas:
            replica.terminate()
            replica.kill()
            await replica.close_channel()
