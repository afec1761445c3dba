"""``quiver serve`` as a real process: a free port, its command, start, wait for SERVING, stop.

The one harness that tests (``Served``, ``start_serve``) and benchmarks (``ServerProcess``)
use; ``tests/support/serve_group.py`` adds the SIGKILLed, own-process-group variant.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """This environment without QUIVER_* settings, so only the flags we pass apply."""
    return {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}


def serve_command(listen: str, data_dir: Path | str, *extra: str) -> list[str]:
    """The argv of ``quiver serve --listen LISTEN --data-dir DATA_DIR EXTRA...``, with the
    HTTP listener on a free port unless EXTRA names one (the last --http-listen wins)."""
    command = [sys.executable, "-m", "quiver.server.cli", "serve"]
    http = ["--http-listen", "127.0.0.1:0"]
    return [*command, "--listen", listen, "--data-dir", str(data_dir), *http, *extra]


def is_serving(target: str, timeout: float = 1.0) -> bool:
    """One health check on a fresh channel: True when it answers SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == SERVING)


async def is_serving_async(target: str, timeout: float = 1.0) -> bool:
    """``is_serving`` for the event loop. A channel per attempt: one kept across attempts
    would wait out gRPC's reconnect backoff (1 s and more) and make a start look slower."""
    async with aio.insecure_channel(target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except aio.AioRpcError:
            return False
    return bool(reply.status == SERVING)


def wait_serving_process(
    proc: subprocess.Popen[bytes],
    target: str,
    timeout: float,
    logs: Callable[[], str] = lambda: "",
    interval: float = 0.1,
) -> float:
    """Polls health until SERVING; returns the seconds that took. Raises RuntimeError when
    the process exits first and TimeoutError after ``timeout`` s (both with ``logs()``)."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"quiver serve exited with {proc.returncode}:\n{logs()}")
        if is_serving(target):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"quiver serve on {target} not SERVING in {timeout:g} s\n{logs()}")
        time.sleep(interval)


async def await_serving_process(
    proc: subprocess.Popen[bytes],
    target: str,
    timeout: float,
    logs: Callable[[], str] = lambda: "",
    interval: float = 0.05,
) -> float:
    """``wait_serving_process`` for the event loop."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"quiver serve exited with {proc.returncode}:\n{logs()}")
        if await is_serving_async(target):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"quiver serve on {target} not SERVING in {timeout:g} s\n{logs()}")
        await asyncio.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> int | None:
    """SIGTERM, then the exit code; None when it had to be killed after ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


# -- for tests: a server logging to a file, in this environment less QUIVER_* ----------------


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    address: str
    data_dir: Path
    log: Path
    key: str = ""

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_serve(data_dir: Path, log: Path, *extra: str) -> Served:
    """``quiver serve`` on a free port, its output appended to ``log``; not yet waited for."""
    address = f"127.0.0.1:{free_port()}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            serve_command(address, data_dir, *extra), stdout=out, stderr=out, env=clean_env()
        )
    return Served(proc, address, data_dir, log)


def wait_serving(served: Served, timeout: float = 20) -> None:
    """Until ``served`` answers SERVING (fails the test if it exits or takes too long)."""
    wait_serving_process(served.proc, served.address, timeout, served.logs)


def terminate(served: Served, timeout: float = 15) -> int:
    """SIGTERM, then the exit code (killing the process and failing if it does not exit)."""
    code = stop_process(served.proc, timeout)
    if code is None:
        raise AssertionError(
            f"quiver serve did not exit within {timeout} s of SIGTERM:\n{served.logs()}"
        )
    return code


def kill_quietly(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.wait(timeout=5)


# -- for benchmarks: a server in a fresh data dir, its metrics on, its memory measured ---------


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    metrics_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, *extra: str, workers: int = 2) -> ServerProcess:
        port, metrics_port = free_port(), free_port()
        data_dir = Path(tempfile.mkdtemp(prefix="quiver-bench-"))
        command = serve_command(
            *(f"127.0.0.1:{port}", data_dir, "--ingest-workers", str(workers)),
            *("--log-level", "error", "--metrics-listen", f"127.0.0.1:{metrics_port}", *extra),
        )
        server = cls(subprocess.Popen(command), port, data_dir, metrics_port)
        server.wait_serving()
        return server

    def wait_serving(self, timeout: float = 60.0) -> float:
        return wait_serving_process(self.process, self.target, timeout)

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the server process, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> int:
        code = stop_process(self.process, 60)
        return self.process.returncode if code is None else code
