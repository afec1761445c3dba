"""Fixtures for the PostgreSQL storage's tests: one real server per test session
(``tests/support/postgres.py``), a fresh database per test. Import them into a test module
(``from tests.support.pg_fixtures import pg_server, pg_url``); they skip, with the reason,
only when ``postgres_missing()`` says no server can start here."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.postgres import PostgresServer, postgres_missing

_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    why = postgres_missing()
    if why is not None:
        pytest.skip(why)
    server = PostgresServer.start(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.stop()


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
