"""``quiver serve`` in its own process group, for tests that SIGKILL it with its workers.

The ``processes`` fixture (tests/conftest.py) kills every group a test started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import IO

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.serve import serve_command


class ServeProcess:
    """``quiver serve`` in its own process group, logging to a file."""

    def __init__(self, data_dir: Path, port: int, log: Path) -> None:
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            serve_command(
                f"127.0.0.1:{port}",
                data_dir,
                "--ingest-workers",
                "2",
                # A SIGKILLed server's files are taken up once their leases expire: short.
                "--job-lease-seconds",
                "2",
                "--job-renew-seconds",
                "0.5",
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill_group(self) -> None:
        """SIGKILLs what this process group still holds (the server and its workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()


async def wait_serving(channel: aio.Channel, proc: ServeProcess, within: float = 30.0) -> None:
    """Until health answers SERVING on ``channel``; while starting, only UNAVAILABLE or a
    deadline is an acceptable answer."""
    health = health_pb2_grpc.HealthStub(channel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        assert proc.proc.poll() is None, f"quiver serve exited early:\n{proc.log()}"
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert loop.time() < deadline, f"not SERVING within {within} s:\n{proc.log()}"
        await asyncio.sleep(0.05)
