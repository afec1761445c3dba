"""What every peer driver shares (stdlib and numpy only: drivers run in the peer's venv).

A driver is run as ``python <driver> INPUTS STORE OUT``: it reads ``bench/peers.py``'s
inputs from INPUTS, keeps its engine's files in STORE and writes its answers to OUT as
JSON: ``{"build_s", "notes", "scenarios": {name: {"latencies", "wall_s", "found"}}}``,
a scenario the engine cannot run being ``null``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


class Inputs:
    def __init__(self, folder: Path) -> None:
        self.vectors: npt.NDArray[np.float32] = np.load(folder / "vectors.npy")
        self.query_vectors: npt.NDArray[np.float32] = np.load(folder / "query_vectors.npy")
        self.attributes: npt.NDArray[np.int64] = np.load(folder / "attributes.npy")
        self.texts: list[str] = json.loads((folder / "texts.json").read_text("utf-8"))
        self.queries: list[str] = json.loads((folder / "queries.json").read_text("utf-8"))
        self.config: dict[str, Any] = json.loads((folder / "config.json").read_text("utf-8"))
        self.k = int(self.config["k"])

    @property
    def scenarios(self) -> list[dict[str, Any]]:
        return list(self.config["scenarios"])


def timed_loop(search: Callable[[int], list[int]], n: int) -> dict[str, Any]:
    """Query 0 once to warm up, then every query one after another, each timed."""
    search(0)
    latencies: list[float] = []
    found: list[list[int]] = []
    wall = time.perf_counter()
    for q in range(n):
        t = time.perf_counter()
        found.append(search(q))
        latencies.append(time.perf_counter() - t)
    return {"latencies": latencies, "wall_s": time.perf_counter() - wall, "found": found}


def arguments() -> tuple[Inputs, Path, Path]:
    inputs, store, out = (Path(a) for a in sys.argv[1:4])
    return Inputs(inputs), store, out


def write(out: Path, result: dict[str, Any]) -> None:
    out.write_text(json.dumps(result), encoding="utf-8")
