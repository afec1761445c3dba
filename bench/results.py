"""Benchmark figures as JSON files in ``bench/results/``, which ``bench/charts.py`` draws.

Every file is one JSON object: what the benchmark passed to ``save_results``, plus
``created`` (UTC, ISO 8601) and ``machine`` (CPUs, Python, platform) when it did not set them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def save_results(path: Path, data: Mapping[str, Any]) -> Path:
    """Writes ``data`` (plus ``created`` and ``machine``) to ``path`` as indented JSON,
    atomically (a temp file renamed into place); creates the folder. Returns ``path``."""
    out: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **data,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_results(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data
