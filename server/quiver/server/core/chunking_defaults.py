"""The chunking strategy's default and limits: the one place ingest/, core/ and the SQL that
fills in a missing strategy take them from.

A leaf module (it imports nothing of the server), so the ingest workers can use it without
loading the core.
"""

from __future__ import annotations

AUTO_MAX_TOKENS = 800
"""``max_chunk_size_tokens`` of the ``auto`` strategy (OpenAI's default)."""
AUTO_OVERLAP_TOKENS = 400
"""``chunk_overlap_tokens`` of the ``auto`` strategy (OpenAI's default)."""
MIN_CHUNK_TOKENS = 100
"""Smallest ``max_chunk_size_tokens`` of a ``static`` strategy."""
MAX_CHUNK_TOKENS = 4096
"""Largest ``max_chunk_size_tokens`` of a ``static`` strategy; the overlap is at most half."""
