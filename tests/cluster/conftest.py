"""``make cluster-test``: several ``quiver serve`` replicas against one PostgreSQL database
(tests/support/cluster.py). Left out of ``make test`` (they run only with
QUIVER_CLUSTER_TEST=1, which ``make cluster-test`` sets), and skipped with the reason when
this build cannot share a database yet (no ``--database`` setting) or no PostgreSQL server
can be started."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest
from quiver.server.config import Settings

from tests.support.postgres import PostgresServer, postgres_missing

SETTINGS = {f.name for f in fields(Settings)}


def why_not() -> str | None:
    if os.environ.get("QUIVER_CLUSTER_TEST") != "1":
        return "cluster tests run with `make cluster-test` (QUIVER_CLUSTER_TEST=1)"
    if "database" not in SETTINGS:
        return "this build has no --database setting (the PostgreSQL backend, issue 15)"
    return postgres_missing()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = why_not()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer.start(tmp_path / "postgres")
    try:
        yield server
    finally:
        server.stop()
