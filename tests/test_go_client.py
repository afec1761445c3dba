"""A Go client generated from the protos alone (clients/go, built by `make go-client` with
Debian's Go packages), running the seed's flow against `quiver serve`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.serve import clean_env, start_serve, stop_process, wait_serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".go" / "bin" / "quiver-example"


@pytest.mark.skipif(
    not EXAMPLE.exists(),
    reason="no Go client built: 'make go-client' builds it when Go is installed (Debian: "
    "golang-go golang-google-grpc-dev golang-google-protobuf-dev protoc-gen-go "
    "protoc-gen-go-grpc protobuf-compiler)",
)
def test_go_example_runs_the_seed_flow(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    served = start_serve(tmp_path / "data", log, "--ingest-workers", "2")
    target = served.address
    try:
        wait_serving(served, timeout=30)
        done = subprocess.run(
            [str(EXAMPLE)],
            env={**clean_env(), "QUIVER_TARGET": target},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log.read_text()}"
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        summary = json.loads(lines[-1])
        assert summary["batch_status"] == "FILE_BATCH_STATUS_COMPLETED", summary
        assert summary["completed"] == 3, summary
        assert summary["top_result"] == "octopus.txt", summary
        assert summary["vector_store_id"].startswith("vs_")
        assert any(line.startswith("#") for line in lines), "watch updates were printed"
    finally:
        stop_process(served.proc)
