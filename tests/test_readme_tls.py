"""The README's TLS section, run as pasted: its openssl commands, its `quiver serve` line and
its grpcurl, `quiver` and Python calls (only the port is changed, to a free one)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_e2e_grpcurl import clean_env, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


def tls_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## TLS\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not here")
def test_the_readme_tls_section_works_as_pasted(tmp_path: Path) -> None:
    certs, serve, calls = tls_blocks()
    (tmp_path / ".venv").symlink_to(VENV)
    env = clean_env()
    made = bash(certs, tmp_path, env)
    assert made.returncode == 0, made.stderr
    port = str(free_port())
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        ["bash", "-c", "exec " + serve.replace("50051", port).replace("\\\n", " ")],
        cwd=tmp_path,
        env={**env, "QUIVER_DATA_DIR": str(tmp_path / "data")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the README's own grpcurl call, until the server answers it
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            done = bash(calls.replace("50051", port), tmp_path, env)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert done.returncode == 0, done.stdout + done.stderr
        assert '"name": "over-tls"' in done.stdout  # grpcurl's reply
        assert "['over-tls']" in done.stdout  # the Python client's list
        assert done.stdout.count("over-tls") >= 3  # and the quiver command's table
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        log.close()
    assert os.path.exists(tmp_path / "data" / "quiver.sqlite3")
