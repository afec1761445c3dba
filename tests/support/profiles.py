"""Hypothesis profiles: deterministic in `make test`, randomized in `make fuzz`.

"ci" (the default): the same examples on every run and every machine (derandomize), no
example database (nothing carried between runs), and a failure prints the blob that
replays it. "fuzz" (`make fuzz`): a fresh random search, FUZZ_SCALE times the examples of
each test, its time bounded by the Makefile (pytest --timeout per test). Whatever a fuzz
run finds is added to its test as an explicit @example, so `make test` keeps checking it.
"""

from __future__ import annotations

import os

import hypothesis

hypothesis.settings.register_profile(
    "ci", derandomize=True, database=None, print_blob=True, deadline=None
)
hypothesis.settings.register_profile(
    "fuzz", derandomize=False, database=None, print_blob=True, deadline=None
)
PROFILE = os.environ.get("QUIVER_HYPOTHESIS_PROFILE", "ci")
FUZZ_SCALE = int(os.environ.get("QUIVER_FUZZ_SCALE", "10")) if PROFILE == "fuzz" else 1


def load() -> None:
    """Makes the profile QUIVER_HYPOTHESIS_PROFILE names the one in force (conftest calls it)."""
    hypothesis.settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """``n`` examples in `make test`; ``n`` times QUIVER_FUZZ_SCALE in `make fuzz`."""
    return n * FUZZ_SCALE
