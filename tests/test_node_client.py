"""The Node.js client in clients/node, built from the protos alone, against ``quiver serve``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.serve import clean_env, start_serve, stop_process, wait_serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "clients" / "node"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not on PATH")
@pytest.mark.skipif(
    not (NODE_DIR / "node_modules").is_dir(),
    reason="clients/node/node_modules is missing (run 'npm ci' in clients/node)",
)
def test_node_example_runs_a_batch_and_searches(tmp_path: Path) -> None:
    assert NODE is not None
    log = tmp_path / "serve.log"
    served = start_serve(tmp_path / "data", log, "--ingest-workers", "2")
    target = served.address
    try:
        wait_serving(served, timeout=30)
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
        stop_process(served.proc)
