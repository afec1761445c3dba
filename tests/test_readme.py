"""The README, run as pasted: the TLS section (its openssl commands, its `quiver serve` line
and its grpcurl, `quiver` and Python calls; only the port is changed, to a free one), and the
grpcurl session's upload helper with a file past what a command line can carry, and the HTTP
section's curl session and openai SDK example."""

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

from tests.test_e2e_grpcurl import clean_env, free_port, kill_quietly, start_serve, wait_serving

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


def upload_helper() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"^upload\(\) \{\n.*?^\}\n", readme, flags=re.S | re.M)
    assert found is not None, "the README's upload() helper"
    return found.group(0)


def test_the_readme_upload_helper_sends_a_large_file(tmp_path: Path) -> None:
    served = start_serve(tmp_path / "data", tmp_path / "serve.log")
    try:
        wait_serving(served, timeout=60)
        big = tmp_path / "big.txt"
        big.write_text("lorem ipsum dolor sit amet " * 20_000)  # 540 KB, 720 KB in base64
        script = upload_helper().replace("localhost:50051", served.address)
        env = {**clean_env(), "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}"}
        done = bash(f"{script}\nupload {big}", tmp_path, env)
        assert done.returncode == 0, done.stderr
        file_id = done.stdout.strip()
        assert file_id.startswith("file-"), done.stdout
    finally:
        kill_quietly(served)


def http_blocks() -> tuple[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Over HTTP: OpenAI's REST API\n", 1)[1].split("\n## ", 1)[0]
    (curl,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    (python,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return curl, python


@pytest.mark.skipif(shutil.which("curl") is None, reason="the curl command is not here")
def test_the_readme_http_section_works_as_pasted(tmp_path: Path) -> None:
    """The curl session and the openai SDK example, against `quiver serve` (only the HTTP
    port is changed, to a free one)."""
    curl, python = http_blocks()
    port = str(free_port())
    served = start_serve(
        tmp_path / "data", tmp_path / "serve.log", "--http-listen", f"127.0.0.1:{port}"
    )
    try:
        wait_serving(served, timeout=90)  # spawning the ingest workers is slow on a busy machine
        env = clean_env()
        done = bash(curl.replace("8080", port), tmp_path, env)
        assert done.returncode == 0, done.stdout + done.stderr + served.logs()
        out = done.stdout
        assert "event: snapshot" in out and '"status":"completed"' in out
        assert '"object":"vector_store.search_results.page"' in out and "birds.txt" in out
        assert "HTTP/1.1 400" in out and '"param":"name"' in out and "x-request-id:" in out
        script = tmp_path / "openai_example.py"
        script.write_text(python.replace("8080", port))
        ran = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert ran.stdout.startswith("completed 3 of 3\n"), ran.stdout
        assert "birds.txt: Birds migrate south" in ran.stdout
    finally:
        kill_quietly(served)
