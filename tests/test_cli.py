"""The ``quiver`` command line, run as a subprocess against a ``quiver serve`` subprocess.

Output is captured, so the CLI is not on a terminal: batches print one line per update and a
plain summary instead of a progress bar. Exit codes: 0 ok, 1 batch incomplete, 2 usage,
3 API error, 4 unreachable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
from quiver.server.config import Settings, env_name

from tests.support.serve import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

QUIVER = [sys.executable, "-m", "quiver.client.cli"]
UPDATE_LINE = re.compile(
    r"^sequence=(\d+) status=(\w+) completed=(\d+) failed=(\d+) cancelled=(\d+) "
    r"in_progress=(\d+) total=(\d+)$",
    re.MULTILINE,
)
SUMMARY = re.compile(
    r"^batch (vsfb_\w+) (\w+): (\d+) completed, (\d+) failed, (\d+) cancelled of (\d+)$",
    re.MULTILINE,
)
BINARY = bytes(range(256)) * 8  # NUL bytes: unsupported_file


def clean_env() -> dict[str, str]:
    """No QUIVER_* settings, and nothing that makes rich think it is on a terminal."""
    drop = {"COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}
    return {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_") and k not in drop}


def quiver(
    *args: str, target: str | None = None, timeout: float = 30, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    prefix = ["--target", target] if target else []
    return subprocess.run(
        [*QUIVER, *prefix, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        cwd=cwd,
        check=False,
    )


@dataclass
class Served:
    target: str
    log: Path

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return quiver(*args, target=self.target, timeout=timeout)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run(*args)
        assert done.returncode == 0, f"quiver {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("cli")
    target = f"127.0.0.1:{free_port()}"
    log = base / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *QUIVER,
                "serve",
                "--listen",
                target,
                "--data-dir",
                str(base / "data"),
                "--ingest-workers",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"quiver serve exited: {log.read_text()}"
            if quiver("stores", "list", target=target, timeout=20).returncode == 0:
                break
            assert time.monotonic() < deadline, f"quiver serve not up: {log.read_text()}"
            time.sleep(0.2)
        yield Served(target, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_text("An octopus has three hearts and blue blood.\n")
    (tmp_path / "b.md").write_text("# Owls\nOwls hunt silently at night.\n")
    (tmp_path / "bin.dat").write_bytes(BINARY)
    return tmp_path


def new_store(served: Served, name: str = "cli") -> str:
    store = served.json("stores", "create", "--name", name)
    store_id: str = store["id"]
    return store_id


# -- stores and files --------------------------------------------------------------------------


def test_stores_create_get_list_json(served: Served) -> None:
    store = served.json(
        "stores",
        "create",
        "--name",
        "docs",
        "--metadata",
        "team=search",
        "env=test",
        "--expires-days",
        "7",
        "--dimensions",
        "64",
    )
    assert store["id"].startswith("vs_")
    assert store["object"] == "vector_store"
    assert store["name"] == "docs"
    assert store["metadata"] == {"team": "search", "env": "test"}
    assert store["expires_after"] == {"days": 7, "anchor": "last_active_at"}
    assert store["embedding_model"] == "hash"
    assert store["embedding_dimensions"] == 64
    assert served.json("stores", "get", store["id"])["name"] == "docs"
    assert store["id"] in {s["id"] for s in served.json("stores", "list")}
    table = served.ok("stores", "list").stdout
    assert store["id"] in table
    deleted = served.json("stores", "delete", store["id"])
    assert deleted == {"id": store["id"], "object": "vector_store.deleted", "deleted": True}


def test_files_upload_list_get_delete(served: Served, docs: Path) -> None:
    uploaded = served.json("files", "upload", str(docs / "a.txt"), str(docs / "b.md"))
    assert [f["filename"] for f in uploaded] == ["a.txt", "b.md"]
    assert all(f["id"].startswith("file-") for f in uploaded)
    assert uploaded[0]["bytes"] == (docs / "a.txt").stat().st_size
    listed = served.json("files", "list")
    assert isinstance(listed, list)
    assert {f["id"] for f in uploaded} <= {f["id"] for f in listed}
    got = served.json("files", "get", uploaded[0]["id"])
    assert got == uploaded[0]
    table = served.ok("files", "upload", str(docs / "b.md")).stdout
    assert "b.md" in table and "file-" in table
    assert served.json("files", "delete", uploaded[1]["id"])["deleted"] is True
    assert uploaded[1]["id"] not in {f["id"] for f in served.json("files", "list")}


# -- batches -----------------------------------------------------------------------------------


def test_batch_with_a_failed_file_watch_files_and_exit_code(served: Served, docs: Path) -> None:
    store = new_store(served)
    done = served.run(
        "batches",
        "create",
        store,
        str(docs / "a.txt"),
        str(docs / "bin.dat"),
        "--attr",
        "batch_id=import-2024-01",
        "--watch",
    )
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"  # a file failed
    out = done.stdout
    assert "\x1b[" not in out, "no terminal escapes when not on a terminal"
    updates = UPDATE_LINE.findall(out)
    assert updates, out
    sequences = [int(u[0]) for u in updates]
    assert sequences == sorted(sequences)
    last = updates[-1]
    assert last[1] == "completed"
    assert (last[2], last[3], last[6]) == ("1", "1", "2")  # completed, failed, total
    summary = SUMMARY.search(out)
    assert summary, f"no one-line summary in:\n{out}"
    batch_id = summary.group(1)
    assert summary.groups()[1:] == ("completed", "1", "1", "0", "2")
    after = out[summary.end() :]
    assert "bin.dat" in after, f"the summary should name the failed file:\n{out}"
    assert "a.txt" not in after
    assert "unsupported_file" in after

    watched = served.run("batches", "watch", store, batch_id)
    assert watched.returncode == 1
    assert len(UPDATE_LINE.findall(watched.stdout)) == 1  # a finished batch: its snapshot
    assert SUMMARY.search(watched.stdout)
    assert "bin.dat" in watched.stdout and "unsupported_file" in watched.stdout

    failed = served.json("batches", "files", store, batch_id, "--status", "failed")
    assert len(failed) == 1
    assert failed[0]["status"] == "failed"
    assert failed[0]["last_error"]["code"] == "unsupported_file"
    assert failed[0]["attributes"] == {"batch_id": "import-2024-01"}
    completed = served.json("batches", "files", store, batch_id, "--status", "completed")
    assert len(completed) == 1 and completed[0]["id"] != failed[0]["id"]
    table = served.ok("batches", "files", store, batch_id, "--status", "failed").stdout
    assert failed[0]["id"] in table and "unsupported_file" in table

    cancel = served.run("batches", "cancel", store, batch_id)
    assert cancel.returncode == 3 and "FAILED_PRECONDITION" in cancel.stderr


def test_batch_with_good_files_exits_zero_and_search(served: Served, docs: Path) -> None:
    store = new_store(served)
    done = served.run(
        "batches",
        "create",
        store,
        str(docs / "a.txt"),
        str(docs / "b.md"),
        "--attr",
        "batch_id=import-2024-01",
        "year=2024",
        "--watch",
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert UPDATE_LINE.findall(done.stdout)[-1][1:3] == ("completed", "2")
    summary = SUMMARY.search(done.stdout)
    assert summary and summary.groups()[1:] == ("completed", "2", "0", "0", "2")
    assert "did not complete" not in done.stdout

    result = served.json("search", store, "which animal has three hearts?")
    assert result["search_query"] == ["which animal has three hearts?"]
    assert result["data"], result
    top = result["data"][0]
    assert top["filename"] == "a.txt"
    assert "three hearts" in top["text"]
    assert top["attributes"] == {"batch_id": "import-2024-01", "year": 2024}
    assert 0 <= top["score"] <= 1
    filtered = served.json(
        "search",
        store,
        "animals",
        "--filter",
        '{"type": "eq", "key": "year", "value": 2023}',
    )
    assert filtered["data"] == []
    several = served.json("search", store, "owls", "night", "--max-results", "1")
    assert several["search_query"] == ["owls", "night"] and len(several["data"]) == 1
    table = served.ok("search", store, "owls at night").stdout
    assert "b.md" in table


def test_batch_json_watch_and_file_ids(served: Served, docs: Path) -> None:
    store = new_store(served)
    (uploaded,) = served.json("files", "upload", str(docs / "b.md"))
    done = served.run("batches", "create", store, "--file-id", uploaded["id"], "--watch", "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines and lines[0]["snapshot"] is True
    assert lines[-1]["batch"]["status"] == "completed"
    assert lines[-1]["batch"]["file_counts"]["completed"] == 1
    created = served.json("batches", "create", store, "--file-id", uploaded["id"])
    assert created["id"].startswith("vsfb_") and created["vector_store_id"] == store


# -- exit codes --------------------------------------------------------------------------------


def test_api_error_exits_3(served: Served) -> None:
    done = served.run("stores", "get", "vs_nope")
    assert done.returncode == 3
    assert "NOT_FOUND" in done.stderr and "vs_nope" in done.stderr
    assert done.stdout == ""
    bad = served.run("search", "vs_nope", "q", "--max-results", "500")
    assert bad.returncode == 3


def test_text_from_the_server_or_user_is_not_rich_markup(served: Served, docs: Path) -> None:
    done = served.run("stores", "get", "vs_[/oops]")
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert "vs_[/oops]" in done.stderr
    store = new_store(served)
    weird = docs / "[red]weird.txt"  # as markup it would print as "weird.txt"
    weird.write_text("brackets in a filename [bold]\n")
    assert served.run("batches", "create", store, str(weird), "--watch").returncode == 0
    listed = served.ok("files", "list").stdout
    assert "[red]weird.txt" in listed
    table = served.ok("search", store, "[/x] brackets").stdout
    assert "[/x] brackets" in table and "[red]weird.txt" in table


def test_unreachable_exits_4() -> None:
    done = quiver("--target", "127.0.0.1:1", "stores", "list", timeout=60)
    assert done.returncode == 4, done.stderr
    assert "cannot reach" in done.stderr and "127.0.0.1:1" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("stores",),
        ("stores", "frobnicate"),
        ("stores", "create", "--expires-days", "soon"),
        ("batches", "files", "vs_x", "vsfb_x", "--status", "done"),
        ("stores", "create", "--metadata", "no-equals-sign"),
        ("batches", "create", "vs_x"),
        ("files", "upload", "/nonexistent/quiver/file.txt"),
    ],
    ids=lambda a: " ".join(a) or "no-args",
)
def test_bad_usage_exits_2(args: tuple[str, ...]) -> None:
    # nothing listens on port 1: usage errors must be caught before any call is made
    done = quiver(*args, target="127.0.0.1:1")
    assert done.returncode == 2, f"{done.stdout}\n{done.stderr}"
    assert done.stderr.strip()
    assert "Traceback" not in done.stderr


def test_serve_help_lists_every_environment_variable() -> None:
    done = quiver("serve", "--help")
    assert done.returncode == 0
    for f in fields(Settings):
        assert env_name(f.name) in done.stdout, env_name(f.name)
    for name in ("QUIVER_LISTEN", "QUIVER_DATA_DIR", "QUIVER_API_KEYS_FILE"):
        assert name in done.stdout
    assert "--listen" in done.stdout and "--data-dir" in done.stdout
    top = quiver("--help")
    assert top.returncode == 0 and "serve" in top.stdout and "Exit codes" in top.stdout
