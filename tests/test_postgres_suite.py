"""Existing tests of batches, watch, idempotency, vector stores and filtered search (the
attribute index and its cached vectors read from PostgreSQL), run again through the
gRPC API of a server on PostgreSQL (``--database``): this module's ``settings`` fixture
adds a fresh database to the shared one, so the imported tests' ``running`` server uses it.

Left out: the tests that read or write the SQLite file directly (test_batches.py's
request_id, running-batch expiry, unknown-files, content, list/cursor, store deletion,
detach, cancel, re-attach and large-content tests; test_job_leases.py, whose PostgreSQL
counterparts are in test_postgres_storage.py), those overriding settings in their own
module (test_files.py), and request validation that never reaches the database."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from quiver.server.config import Settings

from tests.support.pg_fixtures import pg_server, pg_url
from tests.test_attribute_index import test_filtered_search_follows_every_change
from tests.test_batches import (
    test_a_cancel_that_loses_the_race_with_the_last_file_is_refused,
    test_a_detached_file_stays_listed_in_its_batch,
    test_a_request_id_retry_after_the_store_expired_returns_the_batch,
    test_a_store_that_expires_under_a_queued_batch_fails_it,
    test_attribute_rules,
    test_cancel_of_a_completed_batch_is_refused,
    test_create_needs_1_to_2000_files,
    test_create_rejects_duplicate_ids_naming_the_index,
    test_create_vector_store_file_processes_one_file,
    test_expired_store_refuses_batches,
    test_full_queue_is_resource_exhausted,
    test_mixed_batch_of_50,
    test_per_file_specs_are_applied,
    test_unknown_ids_are_not_found_and_nothing_is_created,
)
from tests.test_filters import test_search_results_satisfy_random_filters
from tests.test_idempotency import (
    test_a_reused_request_id_with_another_body_names_the_difference,
    test_many_unknown_file_ids_keep_the_trailer_small,
    test_unknown_file_ids_come_back_as_resource_info_details,
)
from tests.test_store_drops import test_deleting_a_store_drops_every_cache_of_it_at_once
from tests.test_vector_stores import *  # noqa: F403 - every one of them, on PostgreSQL
from tests.test_watch import (
    test_a_watcher_that_leaves_is_released,
    test_a_watcher_that_never_reads_blocks_nothing,
    test_five_watchers_agree,
    test_resume_after_a_sequence,
    test_snapshot_then_changes_then_terminal,
    test_watch_of_another_tenant_is_not_found,
    test_watching_a_finished_batch_sends_one_snapshot,
)

__all__ = [
    "pg_server",
    "pg_url",
    "test_a_cancel_that_loses_the_race_with_the_last_file_is_refused",
    "test_a_detached_file_stays_listed_in_its_batch",
    "test_a_request_id_retry_after_the_store_expired_returns_the_batch",
    "test_a_reused_request_id_with_another_body_names_the_difference",
    "test_a_store_that_expires_under_a_queued_batch_fails_it",
    "test_a_watcher_that_leaves_is_released",
    "test_a_watcher_that_never_reads_blocks_nothing",
    "test_attribute_rules",
    "test_cancel_of_a_completed_batch_is_refused",
    "test_create_needs_1_to_2000_files",
    "test_create_rejects_duplicate_ids_naming_the_index",
    "test_create_vector_store_file_processes_one_file",
    "test_deleting_a_store_drops_every_cache_of_it_at_once",
    "test_expired_store_refuses_batches",
    "test_filtered_search_follows_every_change",
    "test_five_watchers_agree",
    "test_full_queue_is_resource_exhausted",
    "test_many_unknown_file_ids_keep_the_trailer_small",
    "test_mixed_batch_of_50",
    "test_per_file_specs_are_applied",
    "test_resume_after_a_sequence",
    "test_search_results_satisfy_random_filters",
    "test_snapshot_then_changes_then_terminal",
    "test_unknown_file_ids_come_back_as_resource_info_details",
    "test_unknown_ids_are_not_found_and_nothing_is_created",
    "test_watch_of_another_tenant_is_not_found",
    "test_watching_a_finished_batch_sends_one_snapshot",
]

pytestmark = pytest.mark.slow  # a few minutes on a loaded 2-core machine: `make test` runs it


@pytest.fixture
def settings(tmp_path: Path, overrides: dict[str, Any], pg_url: str) -> Iterator[Settings]:
    base = Settings(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        ingest_workers=2,
        database=pg_url,
    )
    yield replace(base, **overrides)
