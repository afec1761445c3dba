"""What the server logged over all its lives."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LogFacts:
    resumed_files: int = 0
    reconciled: int = 0
    labels_added: int = 0
    labels_removed: int = 0
    rebuilt: int = 0
    errors: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)  # output that is not a JSON log line
    warnings: Counter[str] = field(default_factory=Counter)
    last_start_reconciled: int = 0


def read_log(path: Path) -> LogFacts:
    """What the server logged (JSON lines) over all its lives; other stderr output (a
    traceback, a warning) is kept as blocks of consecutive lines, first … last."""
    facts = LogFacts()
    if not path.exists():
        return facts
    block: list[str] = []

    def flush() -> None:
        if block:
            first, last = block[0].strip()[:120], block[-1].strip()[:160]
            facts.stderr.append(first if len(block) == 1 else f"{first} … {last}")
            block.clear()

    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("--- soak: start"):
            flush()
            facts.last_start_reconciled = 0
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict):
            if raw.strip():
                # Two unindented lines in a row: the end of one output (a traceback's
                # exception line) and the start of the next.
                if block and not raw[0].isspace() and not block[-1][0].isspace():
                    flush()
                block.append(raw)
            continue
        flush()
        msg, level = str(entry.get("msg", "")), str(entry.get("level", ""))
        if msg == "resuming unfinished files":
            facts.resumed_files += int(entry.get("files", 0))
        elif msg == "reconciled index":
            facts.reconciled += 1
            facts.last_start_reconciled += 1
            facts.labels_added += int(entry.get("added", 0))
            facts.labels_removed += int(entry.get("removed", 0))
            facts.rebuilt += bool(entry.get("rebuilt"))
        if level in ("error", "critical"):
            facts.errors.append(f"{msg} {str(entry.get('exc', ''))[-300:]}".strip())
        elif level == "warning":
            facts.warnings[msg[:100]] += 1
    flush()
    return facts
