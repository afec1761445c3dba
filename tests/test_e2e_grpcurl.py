"""End to end: `quiver serve` as a real process, driven with the real grpcurl binary."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

GRPCURL = Path(sys.executable).with_name("grpcurl")
QUIVER_SERVICES = {
    "quiver.v1.FileService",
    "quiver.v1.VectorStoreService",
    "quiver.v1.FileBatchService",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """This environment without QUIVER_* settings, so only the flags we pass apply."""
    return {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    address: str
    data_dir: Path
    log: Path
    key: str = ""

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def grpcurl(
    address: str,
    *positional: str,
    flags: Sequence[str] = (),
    key: str = "",
    stdin: str | None = None,
    timeout: float = 20,
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext [flags] ADDRESS positional...`` with a Bearer key when given."""
    auth = ["-H", f"authorization: Bearer {key}"] if key else []
    return subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "10", *auth, *flags, address, *positional],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def call(served: Served, method: str, body: str | None = None, **kw: Any) -> Any:
    """Calls ``method`` with a JSON body through grpcurl and returns the parsed JSON reply."""
    flags = ["-d", body] if body is not None else []
    done = grpcurl(served.address, method, flags=flags, key=served.key, **kw)
    assert done.returncode == 0, f"{method}: {done.stderr}"
    return json.loads(done.stdout)


def start_serve(data_dir: Path, log: Path, *extra: str) -> Served:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quiver.server.cli",
                "serve",
                "--listen",
                address,
                "--data-dir",
                str(data_dir),
                "--http-listen",
                "127.0.0.1:0",
                *extra,
            ],
            stdout=out,
            stderr=out,
            env=clean_env(),
        )
    return Served(proc, address, data_dir, log)


def wait_serving(served: Served, timeout: float = 20) -> None:
    """Polls the health service through grpcurl until it answers SERVING."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            pytest.fail(f"quiver serve exited with {served.proc.returncode}:\n{served.logs()}")
        done = grpcurl(served.address, "grpc.health.v1.Health/Check", timeout=10)
        last = done.stdout + done.stderr
        if done.returncode == 0 and json.loads(done.stdout).get("status") == "SERVING":
            return
        time.sleep(0.1)
    pytest.fail(f"not SERVING within {timeout} s; last answer: {last}\n{served.logs()}")


def terminate(served: Served, timeout: float = 15) -> int:
    """SIGTERM, then the exit code (killing the process if it does not exit in time)."""
    served.proc.send_signal(signal.SIGTERM)
    try:
        return served.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        served.proc.kill()
        served.proc.wait(timeout=5)
        pytest.fail(f"quiver serve did not exit within {timeout} s of SIGTERM:\n{served.logs()}")


def kill_quietly(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One keyed server for the module: its key made with `quiver keys add`."""
    root = tmp_path_factory.mktemp("e2e")
    keys_file = root / "keys"
    made = subprocess.run(
        [sys.executable, "-m", "quiver.server.cli", "keys", "add", "e2e", "--file", str(keys_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=clean_env(),
    )
    server = start_serve(root / "data", root / "serve.log", "--api-keys-file", str(keys_file))
    server.key = made.stdout.strip()
    try:
        wait_serving(server)
        yield server
    finally:
        try:
            if server.proc.poll() is None:
                terminate(server)
        finally:
            kill_quietly(server)


def test_reflection_lists_and_describes(served: Served) -> None:
    listed = grpcurl(served.address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert services >= QUIVER_SERVICES | {"grpc.health.v1.Health"}
    assert {s for s in services if s.startswith("quiver.")} == QUIVER_SERVICES

    described = grpcurl(served.address, "describe", "quiver.v1.FileBatchService")
    assert described.returncode == 0, described.stderr
    assert "quiver.v1.FileBatchService is a service" in described.stdout
    assert "rpc WatchFileBatch ( .quiver.v1.WatchFileBatchRequest ) returns ( stream" in (
        described.stdout
    )
    assert "rpc CreateFileBatch" in described.stdout


def test_health_per_service_without_a_key(served: Served) -> None:
    for service in sorted(QUIVER_SERVICES):
        done = grpcurl(
            served.address,
            "grpc.health.v1.Health/Check",
            flags=["-d", json.dumps({"service": service})],
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"status": "SERVING"}, service


def test_create_and_list_vector_stores(served: Served) -> None:
    created = call(
        served,
        "quiver.v1.VectorStoreService/CreateVectorStore",
        '{"name":"docs","metadata":{"team":"search"}}',
    )
    store = created["vector_store"]  # proto field names, as in OpenAI's JSON
    assert store["id"].startswith("vs_")
    assert store["object"] == "vector_store"
    assert store["name"] == "docs"
    assert store["metadata"] == {"team": "search"}
    assert store["status"] == "VECTOR_STORE_STATUS_COMPLETED"
    assert store["embedding_model"] == "hash"

    listed = call(served, "quiver.v1.VectorStoreService/ListVectorStores", "{}")
    assert listed["object"] == "list"
    assert store["id"] in [s["id"] for s in listed["data"]]
    got = call(
        served,
        "quiver.v1.VectorStoreService/GetVectorStore",
        json.dumps({"vector_store_id": store["id"]}),
    )
    assert got["vector_store"] == store


def test_invalid_body_is_invalid_argument(served: Served) -> None:
    body = json.dumps({"name": "bad", "metadata": {"k": "v" * 513}})
    done = grpcurl(
        served.address,
        "quiver.v1.VectorStoreService/CreateVectorStore",
        flags=["-d", body],
        key=served.key,
    )
    assert done.returncode != 0
    assert "Code: InvalidArgument" in done.stderr
    assert "metadata['k']" in done.stderr  # the message names the field
    assert "google.rpc.BadRequest" in done.stderr  # and the details travel

    formatted = grpcurl(
        served.address,
        "quiver.v1.VectorStoreService/CreateVectorStore",
        flags=["-format-error", "-d", body],
        key=served.key,
    )
    assert formatted.returncode != 0
    error = json.loads(formatted.stderr)  # -format-error prints the status as JSON
    assert error["code"] == 3  # INVALID_ARGUMENT
    kinds = {d["@type"].rsplit(".", 1)[-1]: d for d in error["details"]}
    assert kinds["BadRequest"]["field_violations"][0]["field"] == "metadata['k']"
    assert kinds["ErrorInfo"]["domain"] == "quiver"


def test_upload_with_two_json_messages(served: Served) -> None:
    content = b"hello from grpcurl\n"
    messages = (
        json.dumps({"filename": "hello.txt", "purpose": "assistants"})
        + "\n"
        + json.dumps({"data": base64.b64encode(content).decode()})
    )
    uploaded = call(served, "quiver.v1.FileService/UploadFile", "@", stdin=messages)
    file = uploaded["file"]
    assert file["id"].startswith("file-")
    assert int(file["bytes"]) == len(content)  # int64 prints as a JSON string

    got = call(served, "quiver.v1.FileService/GetFile", json.dumps({"file_id": file["id"]}))
    assert got["file"] == file
    assert int(got["file"]["bytes"]) == len(content)
    assert got["file"]["filename"] == "hello.txt"

    # DownloadFile streams: grpcurl prints one JSON object per message.
    done = grpcurl(
        served.address,
        "quiver.v1.FileService/DownloadFile",
        flags=["-d", json.dumps({"file_id": file["id"]})],
        key=served.key,
    )
    assert done.returncode == 0, done.stderr
    decoder = json.JSONDecoder()
    text, at, parts = done.stdout, 0, []
    while text[at:].strip():
        at = len(text) - len(text[at:].lstrip())
        obj, at = decoder.raw_decode(text, at)
        parts.append(obj)
    assert parts[0]["file"] == file
    assert b"".join(base64.b64decode(p.get("data", "")) for p in parts) == content


def test_rpcs_need_the_key(served: Served) -> None:
    for key in ("", "qv_wrong"):
        done = grpcurl(
            served.address, "quiver.v1.FileService/ListFiles", flags=["-d", "{}"], key=key
        )
        assert done.returncode != 0
        assert "Code: Unauthenticated" in done.stderr, done.stderr


def test_sigterm_drains_and_exits_0_and_data_survives(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_serve(data, tmp_path / "first.log")
    try:
        wait_serving(first)
        created = call(first, "quiver.v1.VectorStoreService/CreateVectorStore", '{"name":"kept"}')
        assert terminate(first) == 0, first.logs()
    finally:
        kill_quietly(first)
    logged = [json.loads(line) for line in first.logs().splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in logged]
    assert "draining" in messages and messages[-1] == "stopped", messages

    second = start_serve(data, tmp_path / "second.log")
    try:
        wait_serving(second)
        listed = call(second, "quiver.v1.VectorStoreService/ListVectorStores", "{}")
        assert [s["id"] for s in listed["data"]] == [created["vector_store"]["id"]]
        assert terminate(second) == 0, second.logs()
    finally:
        kill_quietly(second)


def test_busy_port_is_a_clean_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "quiver.server.cli",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=clean_env(),
        )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2
    assert f"quiver serve: cannot listen on 127.0.0.1:{port}" in done.stderr
