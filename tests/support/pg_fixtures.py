"""Fixtures for the PostgreSQL storage's tests: one real server per test session
(``tests/support/postgres.py``), a fresh database per test. Import them into a test module
(``from tests.support.pg_fixtures import pg_server, pg_url``); they skip, with the reason,
only when ``postgres_missing()`` says no server can start here."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import PostgresServer, postgres_missing

_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """In a directory of its own (not pytest's temporary ones: the server runs as another
    user, and concurrent pytest sessions prune those)."""
    why = postgres_missing()
    if why is not None:
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="quiver-pg-"))
    try:
        try:
            server = PostgresServer.start(root / "cluster")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"{exc.cmd[-8:]} failed: {(exc.stderr or b'').decode(errors='replace')}"
            ) from exc
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server (CREATE DATABASE fails
    while another session is copying the template: tried again for a few seconds)."""
    name = f"t{next(_names)}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with psycopg.connect(pg_server.url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return pg_server.url.rsplit("/", 1)[0] + "/" + name
