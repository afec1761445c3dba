"""What a killed server leaves alive: the members of its process group."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Member:
    name: str
    started: int  # clock ticks after boot (/proc/PID/stat field 22): tells a reused pid apart


def _stat(pid: int) -> tuple[str, str, int, int] | None:
    """(name, state, process group, start time) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, fields[0], int(fields[2]), int(fields[19])


def group_members(group: int) -> dict[int, Member]:
    """Live (non-zombie) processes in process group ``group``."""
    members: dict[int, Member] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] != "Z" and stat[2] == group:
                members[int(entry.name)] = Member(stat[0], stat[3])
    return members


def same_process(pid: int, member: Member) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z" and stat[3] == member.started


def kill_members(group: dict[int, Member]) -> None:
    for pid, member in group.items():
        if same_process(pid, member):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
