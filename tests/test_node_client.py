"""The Node.js client in clients/node, built from the protos alone, against ``quiver serve``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "clients" / "node"
NODE = shutil.which("node")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}


def wait_serving(proc: subprocess.Popen[bytes], target: str, log: Path) -> None:
    """Until the server answers a client call (bounded)."""
    from quiver.client import Client, QuiverError

    deadline = time.monotonic() + 30
    with Client(target=target, max_retries=0, timeout=2) as client:
        while True:
            assert proc.poll() is None, f"quiver serve exited:\n{log.read_text()}"
            try:
                list(client.vector_stores.list())
                return
            except QuiverError:
                assert time.monotonic() < deadline, f"quiver serve not up:\n{log.read_text()}"
                time.sleep(0.2)


@pytest.mark.skipif(NODE is None, reason="node is not on PATH")
@pytest.mark.skipif(
    not (NODE_DIR / "node_modules").is_dir(),
    reason="clients/node/node_modules is missing (run 'npm ci' in clients/node)",
)
def test_node_example_runs_a_batch_and_searches(tmp_path: Path) -> None:
    assert NODE is not None
    target = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quiver.client.cli",
                "serve",
                "--listen",
                target,
                "--data-dir",
                str(tmp_path / "data"),
                "--ingest-workers",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    try:
        wait_serving(server, target, log)
        done = subprocess.run(
            [NODE, "example.js"],
            cwd=NODE_DIR,
            env={**clean_env(), "QUIVER_TARGET": target},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log.read_text()}"
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        assert lines, done.stderr
        summary = json.loads(lines[-1])
        assert summary["batch_status"] == "FILE_BATCH_STATUS_COMPLETED", summary
        assert summary["completed"] == 3, summary
        assert summary["top_result"] == "octopus.txt", summary
        assert summary["vector_store_id"].startswith("vs_")
        # The BadRequest detail, decoded from grpc-status-details-bin by the Node client.
        assert summary["bad_request_fields"] == ["metadata['k']"], summary
        assert any(line.startswith("#") for line in lines), "watch updates were printed"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
