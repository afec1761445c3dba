"""How the server talks to its OpenAI-compatible endpoint: request timeout, batch size, how
many requests may be in flight, and the prefixes a model wants on query and passage input.

Every value comes from a server flag (config.py); ``check_openai_tuning`` validates them all
and names each bad flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_TIMEOUT_S = 0.1
MAX_TIMEOUT_S = 3600.0
MAX_BATCH_SIZE = 2048  # OpenAI's own limit on inputs per request
MAX_CONCURRENCY = 256
MAX_QUERY_QUEUE = 10_000
MAX_PREFIX_CHARS = 256
TIMEOUT_RETRIES = 2  # of a single input that timed out, before the embedding fails


@dataclass(frozen=True)
class OpenAITuning:
    """Picklable (it travels to the ingest workers inside an EmbedderSpec).

    ``slots_dir``/``slots``: the ingest workers together keep at most ``slots`` requests in
    flight, each holding an exclusive lock on one of ``slots`` files in ``slots_dir``
    (embedders/request_slots.py); None/0: no limit (the server's query embeddings have a
    bounded lane of their own instead, core/query_embedding.py).
    """

    timeout_s: float = 30.0
    batch_size: int = 64
    query_prefix: str = ""
    passage_prefix: str = ""
    slots_dir: str | None = None
    slots: int = 0


def check_openai_tuning(
    *,
    timeout_s: float,
    batch_size: int,
    concurrency: int,
    query_concurrency: int,
    query_queue: int,
    query_prefix: str,
    passage_prefix: str,
) -> list[str]:
    """What is wrong with these settings, one message per bad flag (empty: all good)."""
    problems: list[str] = []
    if not (math.isfinite(timeout_s) and MIN_TIMEOUT_S <= timeout_s <= MAX_TIMEOUT_S):
        problems.append(
            f"--openai-timeout must be {MIN_TIMEOUT_S}…{MAX_TIMEOUT_S:g} seconds, not {timeout_s}"
        )
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        problems.append(f"--openai-batch-size must be 1…{MAX_BATCH_SIZE}, not {batch_size}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        problems.append(f"--openai-concurrency must be 1…{MAX_CONCURRENCY}, not {concurrency}")
    if not 1 <= query_concurrency <= MAX_CONCURRENCY:
        problems.append(
            f"--openai-query-concurrency must be 1…{MAX_CONCURRENCY}, not {query_concurrency}"
        )
    if not 0 <= query_queue <= MAX_QUERY_QUEUE:
        problems.append(f"--openai-query-queue must be 0…{MAX_QUERY_QUEUE}, not {query_queue}")
    for flag, prefix in (
        ("--openai-query-prefix", query_prefix),
        ("--openai-passage-prefix", passage_prefix),
    ):
        if len(prefix) > MAX_PREFIX_CHARS:
            problems.append(f"{flag} must be at most {MAX_PREFIX_CHARS} characters")
        elif not prefix.isprintable():
            problems.append(f"{flag} must not hold control characters")
    return problems


def hung_endpoint_seconds(timeout_s: float, batch_size: int) -> float:
    """How long one batch takes to fail against an endpoint that never answers: a timeout
    for each halving down to one input, then that input's attempts (backoff left out)."""
    halvings = math.ceil(math.log2(batch_size)) if batch_size > 1 else 0
    return (halvings + 1 + TIMEOUT_RETRIES) * timeout_s
