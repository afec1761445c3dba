"""Start and stop a real ``quiver serve`` process for benchmarks, and read its memory."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        command = [sys.executable, "-m", "quiver.client.cli", "serve"]
        command += ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
        command += ["--ingest-workers", str(workers), "--log-level", "error"]
        command += ["--metrics-listen", f"127.0.0.1:{metrics_port}", *extra]
        server = cls(subprocess.Popen(command), port, data_dir, metrics_port)
        server.wait_serving()
        return server

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"quiver serve on {self.target} did not become SERVING")

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the server process, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
